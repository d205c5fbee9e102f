"""The near-edge expert server: a bundle's experts over the Open Inference Protocol on NVIDIA Triton (PyTriton).

PyTriton ships Triton Inference Server inside its wheel; the experts run in this process through the torch-free
runtime's onnxruntime sessions (ask_the_expert.deploy.runtime), Triton serves them
(ask_the_expert.deploy.serve_contract): HTTP and gRPC, health (``/v2/health/live``, ``/v2/health/ready``), model
metadata and config, Prometheus metrics, dynamic batching of concurrent requests, and a per-request size limit
(``max_batch_size`` images; a larger or malformed request gets HTTP 400 / gRPC INVALID_ARGUMENT with Triton's
message, and the server keeps serving). ``Bundle.load`` checks every expert file's sha256 against the manifest before
anything is served. docs/serving.md says why this engine."""

from __future__ import annotations

import os
import signal
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ask_the_expert.deploy.bundle_format import RouterConfig
from ask_the_expert.deploy.runtime import Bundle, preprocess
from ask_the_expert.deploy.serve_contract import IMAGES, LOGITS, SERVER_MS, expert_model_name
from ask_the_expert.utils.errors import SuiteError


class ServeError(SuiteError):
    """The server cannot start as asked (options, bundle, serving engine)."""


@dataclass(frozen=True)
class ServeOptions:
    """Where and how the experts are served."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = 64
    dynamic_batching: bool = True
    max_queue_delay_us: int = 500
    max_queue_size: int = 256
    threads: int | None = None

    def check(self) -> None:
        """Raise ServeError naming every unusable value."""
        problems = []
        ports = {"http_port": self.http_port, "grpc_port": self.grpc_port, "metrics_port": self.metrics_port}
        problems += [f"--{k} {v} is not a port (1..65535)" for k, v in ports.items() if not 1 <= v <= 65535]
        if len(set(ports.values())) != len(ports):
            problems.append(f"the ports must differ, got {ports}")
        if self.max_batch_size < 1:
            problems.append(f"--max_batch_size {self.max_batch_size} must be >= 1")
        if self.max_queue_delay_us < 0:
            problems.append(f"--max_queue_delay_us {self.max_queue_delay_us} must be >= 0")
        if self.max_queue_size < 1:
            problems.append(f"--max_queue_size {self.max_queue_size} must be >= 1")
        if self.threads is not None and self.threads < 1:
            problems.append(f"--threads {self.threads} must be >= 1 (or null: onnxruntime's default)")
        if problems:
            raise ServeError(f"Cannot serve with these options: {'; '.join(problems)}.")


def expert_infer_function(session: ort.InferenceSession, router: RouterConfig) -> Callable[..., dict[str, Any]]:
    """The batched infer function of one expert: uint8 images -> logits and the run's wall time (ms)."""
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        logits = session.run([LOGITS], {IMAGES: preprocess(inputs[IMAGES], router)})[0]
        elapsed = np.float32((time.perf_counter() - start) * 1e3)
        return {LOGITS: logits, SERVER_MS: np.full((len(logits), 1), elapsed, dtype=np.float32)}

    return infer


def use_interpreter_libpython() -> None:
    """Put this interpreter's libpython first on LD_LIBRARY_PATH for Triton's Python-backend stub.

    The stub links ``libpython3.X.so`` dynamically; an interpreter built outside the system (pyenv, conda) would
    otherwise get the system's libpython of another patch release next to its own standard library, and the stub
    fails while starting the model (e.g. ``'_thread.RLock' object has no attribute '_recursion_count'``)."""
    libdir, library = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
    if libdir and library and (Path(libdir) / library).is_file():
        paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *paths])


def _stop_on_sigterm(*_: Any) -> None:
    raise KeyboardInterrupt  # PyTriton's serve loop stops Triton and cleans its workspace on it


def serve_bundle(folder: str | Path, options: ServeOptions) -> None:
    """Verify the bundle's experts, then serve them until SIGINT or SIGTERM (blocks)."""
    options.check()
    bundle = Bundle.load(folder, "near_edge", threads=options.threads)  # sha256 of every expert file
    if not bundle.router.num_experts:
        raise ServeError(f"The bundle {folder} has no experts (a generalist-only bundle); there is nothing to serve.")
    try:
        from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError as exc:
        raise ServeError(
            f"The serving engine is not installed ({exc}). Install the serve extra: pip install -e '.[serve]'."
        ) from None
    use_interpreter_libpython()
    batcher = (
        DynamicBatcher(
            max_queue_delay_microseconds=options.max_queue_delay_us,
            default_queue_policy=QueuePolicy(max_queue_size=options.max_queue_size),
        )
        if options.dynamic_batching
        else None  # no dynamic_batching block: Triton runs every request on its own
    )
    size = bundle.router.image_size
    config = TritonConfig(
        http_address=options.host,
        http_port=options.http_port,
        grpc_address=options.host,
        grpc_port=options.grpc_port,
        metrics_address=options.host,
        metrics_port=options.metrics_port,
        exit_timeout_secs=5,
    )
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    with Triton(config=config) as triton:
        for j, session in enumerate(bundle.near_edge.sessions):
            triton.bind(
                model_name=expert_model_name(j),
                infer_func=expert_infer_function(session, bundle.router),
                inputs=[Tensor(name=IMAGES, dtype=np.uint8, shape=(size, size, 3))],
                outputs=[
                    Tensor(name=LOGITS, dtype=np.float32, shape=(bundle.router.num_classes,)),
                    Tensor(name=SERVER_MS, dtype=np.float32, shape=(1,)),
                ],
                config=ModelConfig(max_batch_size=options.max_batch_size, batcher=batcher),
                strict=True,
            )
        triton.run()
        batching = f"dynamic batching (delay {options.max_queue_delay_us} us)" if batcher else "no dynamic batching"
        print(
            f"SERVING {bundle.router.num_experts} experts of {folder}: HTTP http://{options.host}:{options.http_port}"
            f"/v2, gRPC {options.host}:{options.grpc_port}, metrics http://{options.host}:{options.metrics_port}"
            f"/metrics; {batching}, at most {options.max_batch_size} images a request",
            flush=True,
        )
        triton.serve()
