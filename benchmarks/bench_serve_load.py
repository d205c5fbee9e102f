"""Load on the near-edge expert server, with and without dynamic batching, in one run; the measured cost profile.

    python benchmarks/bench_serve_load.py --bundle BUNDLE --split val --data.data_dir DIR \\
        --base configs/profiles/edge_arm_wifi.yaml --profile_out measured.yaml [--out load.json]

For each batching mode (``ate-deploy serve --dynamic_batching true`` / ``false``) a server is started on 127.0.0.1
and, at each concurrency, that many edge clients (``ask_the_expert.deploy.client.EdgeClient``, gRPC, one connection
each) classify one image at a time, as edge devices do, in a closed loop bounded by ``--requests`` and ``--seconds``.
Only images the router offloads are used, so every call is a request to the server. Reported per level: requests/s
and p50/p95/p99 of the whole call (generalist + request) and of the request's round trip, the server's compute and
the fallbacks (every image is answered; a fallback counts a request the server did not answer in ``--timeout_s``),
and the mean batch the server ran (images / model executions, from Triton's Prometheus metrics).

The measured profile (``--profile_out``) is written from the clients' timings at concurrency 1 with dynamic
batching (``ask_the_expert.deploy.client.measured_profile``); ``evaluate.py --profiles`` reads it.
"""

from __future__ import annotations

import itertools
import urllib.request
from pathlib import Path
from typing import Any, Literal

import numpy as np
from common import closed_loop, run_cli

from ask_the_expert.deploy.client import ClientOptions, EdgeClient, measured_profile, percentiles
from ask_the_expert.deploy.profile_bundle import write_profile
from ask_the_expert.deploy.runtime import Bundle
from ask_the_expert.deploy.serve_process import ServerProcess
from ask_the_expert.method.costs import load_profile
from ask_the_expert.utils.atomic import write_json_atomic
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions


def offloaded_images(bundle: str, images: str | None, split: str | None, data: DataOptions) -> np.ndarray:
    """The images (a .npy file or a CIFAR-100 split) that the bundle's router sends to the near edge."""
    if (images is None) == (split is None):
        raise SuiteError("Give exactly one input: --images FILE.npy or --split val|test|train.")
    if images:
        pixels = np.load(images, allow_pickle=False)
    else:
        from datamodules.cifar100 import labelled_images

        pixels = labelled_images(data, split).images
    edge = Bundle.load(bundle, "edge").edge.run(pixels)
    if not edge.offloaded.any():
        raise SuiteError(f"The router of {bundle} offloads none of the {len(pixels)} images; nothing loads the server.")
    return pixels[edge.offloaded]


def executions(metrics_url: str) -> tuple[int, int]:
    """(images inferred, model executions) summed over the server's models, from Triton's Prometheus metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as page:
        lines = page.read().decode().splitlines()

    def total(metric: str) -> int:
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in lines if line.startswith(metric + "{"))

    return total("nv_inference_count"), total("nv_inference_exec_count")


def load_level(
    bundle: str, server: ServerProcess, pixels: np.ndarray, concurrency: int, requests: int, seconds: float,
    timeout_s: float,
) -> tuple[dict[str, Any], list[EdgeClient]]:  # fmt: skip
    options = ClientOptions(url=server.grpc_url, timeout_s=timeout_s, retries=0)
    clients = [EdgeClient(bundle, options) for _ in range(concurrency)]
    metrics = f"http://{server.host}:{server.metrics_port}/metrics"
    counter = itertools.count()

    def send(worker: int) -> None:
        i = next(counter) % len(pixels)
        clients[worker].classify(pixels[i : i + 1])

    images_before, runs_before = executions(metrics)
    run = closed_loop(send, concurrency, requests, seconds)
    images_after, runs_after = executions(metrics)
    run["mean_batch"] = round((images_after - images_before) / max(1, runs_after - runs_before), 2)
    timings = [r for c in clients for r in c.requests]
    answered = [r for r in timings if r.outcome == "expert"]
    run["round_trip_ms"] = percentiles([r.round_trip_ms for r in answered])
    run["server_ms"] = percentiles([r.server_ms for r in answered])
    run["fallbacks"] = sum(sum(c.stats.fallbacks.values()) for c in clients)
    for c in clients:
        c.close()
    return run, clients


def main(
    *,
    bundle: str,
    base: str,
    profile_out: str,
    images: str | None = None,
    split: Literal["val", "test", "train"] | None = None,
    data: DataOptions = DataOptions(),
    concurrency: list[int] | None = None,
    requests: int = 400,
    seconds: float = 20.0,
    timeout_s: float = 5.0,
    threads: int | None = None,
    force: bool = False,
    log_dir: str = "runs/bench_serve_load",
    out: str | None = None,
) -> None:
    """Load the server at each concurrency with and without dynamic batching (see the module doc).

    Args:
        bundle: bundle folder.
        base: profile giving powers, link rates and the edge's medium-model latency.
        profile_out: measured profile YAML to write.
        images: .npy file of uint8 images (N, 32, 32, 3).
        split: a CIFAR-100 split instead of --images (needs --data.*).
        data: the CIFAR-100 folder and split settings, as in training.
        concurrency: edge clients at once, per level (default 1, 8, 32).
        requests: most images classified per level.
        seconds: most seconds per level.
        timeout_s: the clients' per-request timeout.
        threads: onnxruntime intra-op threads of the server's experts.
        force: overwrite --profile_out.
        log_dir: folder for the servers' logs.
        out: JSON file to write the measurements to.
    """
    levels = concurrency or [1, 8, 32]
    if requests < 1 or seconds <= 0 or min(levels) < 1 or timeout_s <= 0:
        raise SuiteError(f"Need --requests >= 1, --seconds > 0, --timeout_s > 0 and levels >= 1, got {levels}.")
    if Path(profile_out).exists() and not force:
        raise SuiteError(f"{profile_out} already exists; choose another --profile_out or pass --force true.")
    plan = load_profile(base)
    pixels = offloaded_images(bundle, images, split, data)
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"bundle": bundle, "offloaded_images": len(pixels), "modes": {}}
    profile_clients: list[EdgeClient] = []
    for batching in (True, False):
        mode = "dynamic batching" if batching else "no batching"
        args = ["--dynamic_batching", str(batching).lower(), *(["--threads", str(threads)] if threads else [])]
        with ServerProcess(bundle, args, log=Path(log_dir) / f"serve_{mode.replace(' ', '_')}.log") as server:
            results["modes"][mode] = {"startup_s": round(server.startup_s, 2), "levels": {}}
            for level in levels:
                run, clients = load_level(bundle, server, pixels, level, requests, seconds, timeout_s)
                results["modes"][mode]["levels"][level] = run
                print(f"{mode}, concurrency {level}: {run}", flush=True)
                if batching and level == levels[0]:
                    profile_clients = clients
    head = "| server | concurrency | requests/s | p50 ms | p95 ms | p99 ms | round trip p50 | server p50 | mean batch "
    print(f"\n{head}| fallbacks |\n{'| --- ' * 10}|")
    for mode, result in results["modes"].items():
        for level, r in result["levels"].items():
            print(
                f"| {mode} | {level} | {r['requests_per_s']} | {r['p50']} | {r['p95']} | {r['p99']} | "
                f"{r['round_trip_ms']['p50']} | {r['server_ms']['p50']} | {r['mean_batch']} | {r['fallbacks']} |"
            )
    batches = [b for c in profile_clients for b in c.batches]
    timings = [r for c in profile_clients for r in c.requests]
    context = {"by": "benchmarks/bench_serve_load.py", "concurrency": levels[0], "dynamic_batching": True}
    path = write_profile(measured_profile(batches, timings, plan, context=context), profile_out, force)
    print(f"Wrote {path}")
    if out:
        write_json_atomic(out, results)
        print(f"Wrote {out}")


if __name__ == "__main__":
    run_cli(main, __doc__)
