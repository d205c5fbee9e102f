"""Which Open Inference Protocol (KServe V2) server serves the near-edge experts: the candidates side by side.

    python benchmarks/bench_serving_engines.py --bundle BUNDLE [--requests 300] [--seconds 15]

Each candidate serves the bundle's expert 0 through its onnxruntime session on 127.0.0.1, and the same client
(``tritonclient``, one connection per worker) loads it:

- ``pytriton``: ``ate-deploy serve`` (Triton Inference Server inside PyTriton's wheel; every expert of the
  bundle is loaded, the load goes to expert_0), in this environment;
- ``mlserver``: benchmarks/serving_engines/mlserver_expert.py in ``--mlserver_python`` (adaptive batching on);
- ``kserve``: benchmarks/serving_engines/kserve_expert.py in ``--kserve_python`` (KServe's Python model server).

The engines pin conflicting packages, so MLServer and KServe live in their own environments:
``python3 -m venv .venv-mlserver && .venv-mlserver/bin/pip install mlserver onnxruntime`` (likewise ``kserve``);
a missing one is reported as not installed. Ray Serve and LitServe are not candidates: neither speaks V2 natively.

Measured per engine: start-up (process start until the server and the model answer V2 readiness), then for gRPC
and HTTP (JSON tensors, which every engine reads) at each concurrency, single-image requests in a closed loop
bounded by ``--requests`` and ``--seconds``: requests/s and p50/p95/p99 latency; and what a request of
``--oversized`` images gets (the size limit). Servers are always stopped (process groups). Prints a markdown table
and, with ``--out``, writes the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from common import REPO, closed_loop, run_cli

from ask_the_expert.deploy.serve_contract import IMAGES, LOGITS, expert_model_name
from ask_the_expert.deploy.serve_process import ServerProcess
from ask_the_expert.utils.atomic import write_json_atomic
from ask_the_expert.utils.errors import SuiteError

ENGINES = ("pytriton", "mlserver", "kserve")
ADAPTERS = REPO / "benchmarks" / "serving_engines"
JSON = {"Content-Type": "application/json"}


class EngineProcess(ServerProcess):
    """One candidate engine serving expert 0 of ``bundle`` (see the module doc), started and stopped like
    ``ate-deploy serve``."""

    def __init__(self, engine: str, python: str, bundle: Path, workdir: Path, max_batch_size: int) -> None:
        super().__init__(bundle, ["--max_batch_size", str(max_batch_size)], log=workdir / f"{engine}.log")
        self.models = [expert_model_name(0)]
        self.env["PYTHONPATH"] = f"{REPO}:{ADAPTERS}"
        if engine == "mlserver":
            folder = workdir / "mlserver"
            (folder / "expert_0").mkdir(parents=True, exist_ok=True)
            settings = {"host": self.host, "http_port": self.http_port, "grpc_port": self.grpc_port}
            settings |= {"metrics_port": self.metrics_port, "parallel_workers": 0}
            (folder / "settings.json").write_text(json.dumps(settings))
            model = {"name": "expert_0", "implementation": "mlserver_expert.ExpertModel"}
            model |= {"max_batch_size": max_batch_size, "max_batch_time": 0.0005, "parameters": {"uri": str(bundle)}}
            (folder / "expert_0" / "model-settings.json").write_text(json.dumps(model))
            self.command = [str(Path(python).parent / "mlserver"), "start", str(folder)]
        elif engine == "kserve":
            script = ADAPTERS / "kserve_expert.py"
            self.command = [python, str(script), str(bundle), str(self.http_port), str(self.grpc_port)]


def _senders(engine: EngineProcess, protocol: str, concurrency: int, image: np.ndarray) -> Any:
    """send(worker): one single-image V2 request on the worker's own connection."""
    if protocol == "grpc":
        import tritonclient.grpc as v2

        clients = [v2.InferenceServerClient(engine.grpc_url) for _ in range(concurrency)]
    else:
        import tritonclient.http as v2

        clients = [v2.InferenceServerClient(engine.http_url, network_timeout=30) for _ in range(concurrency)]

    # HTTP as JSON: MLServer does not read the binary tensor extension (HTTP 422), and all engines read JSON (KServe
    # only when the request says it is JSON).
    binary = {} if protocol == "grpc" else {"binary_data": False}
    headers = {} if protocol == "grpc" else {"headers": JSON}

    def send(worker: int) -> None:
        request = v2.InferInput(IMAGES, list(image.shape), "UINT8")
        request.set_data_from_numpy(image, **binary)
        outputs = [v2.InferRequestedOutput(LOGITS, **binary)]
        result = clients[worker].infer(expert_model_name(0), [request], outputs=outputs, **headers)
        if result.as_numpy(LOGITS).shape != (len(image), 100):
            raise ValueError("wrong answer shape")

    return send


def _oversized(engine: EngineProcess, images: int) -> str:
    """What the server answers to one HTTP request of ``images`` images."""
    import tritonclient.http as v2
    from tritonclient.utils import InferenceServerException

    batch = np.zeros((images, 32, 32, 3), dtype=np.uint8)
    request = v2.InferInput(IMAGES, list(batch.shape), "UINT8")
    request.set_data_from_numpy(batch, binary_data=False)
    try:
        outputs = [v2.InferRequestedOutput(LOGITS, binary_data=False)]
        client = v2.InferenceServerClient(engine.http_url, network_timeout=60)
        client.infer(expert_model_name(0), [request], outputs=outputs, headers=JSON)
    except InferenceServerException as exc:
        return f"refused: HTTP {exc.status()} {str(exc)[:120]}"
    except Exception as exc:  # a transport failure is an answer too
        return f"failed: {type(exc).__name__} {str(exc)[:120]}"
    return "accepted"


def measure_engine(
    engine: str, python: str, bundle: Path, workdir: Path, levels: list[int], requests: int, seconds: float,
    oversized: int, max_batch_size: int,
) -> dict[str, Any]:  # fmt: skip
    if not Path(python).is_file():
        return {"engine": engine, "installed": False, "note": f"no interpreter at {python}"}
    image = np.random.default_rng(0).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
    process = EngineProcess(engine, python, bundle, workdir, max_batch_size)
    result: dict[str, Any] = {"engine": engine, "installed": True}
    try:
        process.start()
    except SuiteError as exc:
        process.stop()
        return {**result, "started": False, "note": str(exc)[-600:]}
    try:
        result |= {"started": True, "startup_s": round(process.startup_s, 2), "load": {}}
        for protocol in ("grpc", "http"):
            for concurrency in levels:
                send = _senders(process, protocol, concurrency, image)
                run = closed_loop(send, concurrency, requests, seconds)
                result["load"][f"{protocol}@{concurrency}"] = run
                print(f"{engine} {protocol} c={concurrency}: {run}", flush=True)
        result["oversized"] = _oversized(process, oversized)
    finally:
        process.stop()
    return result


def main(
    *,
    bundle: str,
    engines: list[str] | None = None,
    mlserver_python: str = ".venv-mlserver/bin/python",
    kserve_python: str = ".venv-kserve/bin/python",
    concurrency: list[int] | None = None,
    requests: int = 300,
    seconds: float = 15.0,
    oversized: int = 65,
    max_batch_size: int = 64,
    workdir: str = "runs/bench_serving_engines",
    out: str | None = None,
) -> None:
    """Serve one expert on each engine and load it the same way (see the module doc).

    Args:
        bundle: bundle folder (its expert 0 is served).
        engines: which candidates (pytriton, mlserver, kserve; default all).
        mlserver_python: interpreter of the MLServer environment.
        kserve_python: interpreter of the KServe environment.
        concurrency: client workers per level (default 1, 8, 32).
        requests: most requests per level.
        seconds: most seconds per level.
        oversized: images in the request that probes the size limit.
        max_batch_size: the largest batch an engine may form (and accept, where it enforces it).
        workdir: folder for the engines' logs and settings.
        out: JSON file to write the measurements to.
    """
    engines = engines or list(ENGINES)
    levels = concurrency or [1, 8, 32]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or requests < 1 or seconds <= 0 or min(levels) < 1:
        raise SuiteError(
            f"Need engines among {list(ENGINES)} (got unknown {unknown}), --requests >= 1, --seconds > 0 and "
            f"concurrency levels >= 1 (got {requests}, {seconds}, {levels})."
        )
    folder = Path(bundle).resolve()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    pythons = {"pytriton": sys.executable, "mlserver": mlserver_python, "kserve": kserve_python}
    results = [
        measure_engine(e, pythons[e], folder, work.resolve(), levels, requests, seconds, oversized, max_batch_size)
        for e in engines
    ]
    print("\n| engine | start-up | protocol | concurrency | requests/s | p50 ms | p95 ms | p99 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if not r.get("started"):
            print(f"| {r['engine']} | {r.get('note', 'not started')[:100]} | | | | | | | |")
            continue
        for key, run in r["load"].items():
            protocol, level = key.split("@")
            print(
                f"| {r['engine']} | {r['startup_s']} s | {protocol} | {level} | {run['requests_per_s']} | "
                f"{run['p50']} | {run['p95']} | {run['p99']} | {sum(run['errors'].values())} |"
            )
    for r in results:
        if r.get("started"):
            print(f"{r['engine']}: a request of {oversized} images: {r['oversized']}")
    if out:
        write_json_atomic(out, {"bundle": str(folder), "results": results})
        print(f"Wrote {out}")


if __name__ == "__main__":
    run_cli(main, __doc__)
