"""The edge client: the generalist and the router run here (ask_the_expert.deploy.runtime, torch-free), only the
offloaded images go to the chosen expert's V2 model (ask_the_expert.deploy.serve_contract) through ``tritonclient``,
and every image is answered.

Each request has a timeout; a request that times out or finds the server down is retried at most ``retries``
times (after ``retry_backoff_ms``, then twice that, ...); a request the server refuses (HTTP 4xx / gRPC
INVALID_ARGUMENT and other errors) or whose answer is not a finite (n, num_classes) float32 array is not retried.
When a request fails for good, its images get the generalist's answer and are counted by reason: ``timeout``,
``down``, ``rejected`` or ``garbage``.

Timings are measured per edge batch (the generalist, routing and preprocessing) and per request: the round trip as
the client sees it, the server's compute (``server_ms``, reported by ``ate-deploy serve``; unknown for servers that
do not report it) and their difference, transfer + queueing. ``measured_profile`` turns them into a cost profile
(ask_the_expert.method.costs) whose link and model latencies are these measurements."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ask_the_expert.deploy.runtime import Bundle, EdgeResult, Prediction, combine
from ask_the_expert.deploy.serve_contract import IMAGES, LOGITS, SERVER_MS, expert_model_name
from ask_the_expert.deploy.wire import ExpertAnswer, OffloadRequest
from ask_the_expert.method.costs import Profile, transfer_ms
from ask_the_expert.utils.errors import SuiteError

Protocol = Literal["grpc", "http"]
EXPERT = "expert"
FALLBACK_REASONS = ("timeout", "down", "rejected", "garbage")
RETRIED = ("timeout", "down")


class ClientError(SuiteError):
    """The client cannot run as asked (options, bundle, serving packages)."""


class RequestFailed(Exception):
    """One attempt of a request failed; ``reason`` is one of FALLBACK_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ClientOptions:
    """How the edge reaches the near edge."""

    url: str = "127.0.0.1:8001"
    protocol: Protocol = "grpc"
    timeout_s: float = 1.0
    retries: int = 1
    retry_backoff_ms: float = 50.0

    def check(self) -> None:
        problems = []
        if self.protocol not in ("grpc", "http"):
            problems.append(f"--protocol must be grpc or http, got {self.protocol!r}")
        if not self.timeout_s > 0:
            problems.append(f"--timeout_s {self.timeout_s} must be > 0")
        if self.retries < 0:
            problems.append(f"--retries {self.retries} must be >= 0")
        if self.retry_backoff_ms < 0:
            problems.append(f"--retry_backoff_ms {self.retry_backoff_ms} must be >= 0")
        if not self.url or "/" in self.url:
            problems.append(f"--url {self.url!r} must be host:port (gRPC port for grpc, HTTP port for http)")
        if problems:
            raise ClientError(f"Cannot run the client with these options: {'; '.join(problems)}.")


@dataclass(frozen=True)
class BatchTiming:
    """One edge batch: images, how many were offloaded, the edge compute and the whole batch's wall time (ms)."""

    images: int
    offloaded: int
    edge_ms: float
    total_ms: float


@dataclass(frozen=True)
class RequestTiming:
    """One request to an expert: its outcome (``expert`` or a fallback reason) and measured times (ms)."""

    expert: int
    images: int
    outcome: str
    attempts: int
    round_trip_ms: float
    server_ms: float  # NaN when the server does not report it or the request failed
    bytes_up: int
    bytes_down: int

    @property
    def transfer_queue_ms(self) -> float:
        return self.round_trip_ms - self.server_ms


@dataclass
class ClientStats:
    """Counts over everything a client has classified; ``fallbacks`` counts images by reason."""

    images: int = 0
    offloaded: int = 0
    answered_by_expert: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)
    last_error: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "offloaded": self.offloaded,
            "answered_by_expert": self.answered_by_expert,
            "fallbacks": {r: self.fallbacks[r] for r in FALLBACK_REASONS},
            "last_error": dict(self.last_error),
        }


class V2Connection:
    """One tritonclient connection (gRPC or HTTP) to the expert server; each call has the options' timeout."""

    def __init__(self, options: ClientOptions, num_classes: int) -> None:
        try:
            if options.protocol == "grpc":
                import tritonclient.grpc as v2
            else:
                import tritonclient.http as v2
            from tritonclient.utils import InferenceServerException
        except ImportError as exc:
            raise ClientError(
                f"The V2 client is not installed ({exc}). Install the serve extra: pip install -e '.[serve]'."
            ) from None
        self.options, self.num_classes, self.v2 = options, num_classes, v2
        self.server_error = InferenceServerException
        self.reports_server_ms: dict[str, bool] = {}
        self.client: Any = None

    def _connect(self) -> Any:
        if self.client is None:
            t = self.options.timeout_s
            if self.options.protocol == "grpc":
                self.client = self.v2.InferenceServerClient(self.options.url)
            else:
                self.client = self.v2.InferenceServerClient(self.options.url, connection_timeout=t, network_timeout=t)
        return self.client

    def reset(self) -> None:
        """Drop the connection after a transport failure (the next call opens a new one)."""
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # a broken connection may fail to close; it is dropped either way
                pass
        self.client = None

    def _failure(self, exc: Exception) -> RequestFailed:
        """Which fallback reason an exception of tritonclient or the transport means."""
        text = str(exc) or type(exc).__name__
        if isinstance(exc, self.server_error):
            status = str(exc.status() or "")
            if "DEADLINE_EXCEEDED" in status or "timed out" in text.lower():
                return RequestFailed("timeout", text)
            if "UNAVAILABLE" in status:
                return RequestFailed("down", text)
            return RequestFailed("rejected", f"{status} {text}".strip())
        if isinstance(exc, TimeoutError):
            return RequestFailed("timeout", text)
        return RequestFailed("down", f"{type(exc).__name__}: {text}")

    def _with_server_ms(self, model: str) -> bool:
        """Whether ``model`` declares the ``server_ms`` output (asked once per model)."""
        if model not in self.reports_server_ms:
            kwargs = {"client_timeout": self.options.timeout_s} if self.options.protocol == "grpc" else {}
            meta = self._connect().get_model_metadata(model, **kwargs)
            outputs = meta.outputs if self.options.protocol == "grpc" else meta["outputs"]
            names = [o.name if self.options.protocol == "grpc" else o["name"] for o in outputs]
            self.reports_server_ms[model] = SERVER_MS in names
        return self.reports_server_ms[model]

    def infer(self, expert: int, images: np.ndarray) -> tuple[np.ndarray, float, int]:
        """(logits, server ms or NaN, response payload bytes) of one attempt; raises RequestFailed."""
        model = expert_model_name(expert)
        try:
            with_server_ms = self._with_server_ms(model)
            request = self.v2.InferInput(IMAGES, list(images.shape), "UINT8")
            wanted = [LOGITS, SERVER_MS] if with_server_ms else [LOGITS]
            if self.options.protocol == "grpc":
                request.set_data_from_numpy(images)
                outputs = [self.v2.InferRequestedOutput(n) for n in wanted]
                result = self._connect().infer(model, [request], outputs=outputs, client_timeout=self.options.timeout_s)
            else:
                request.set_data_from_numpy(images, binary_data=True)
                outputs = [self.v2.InferRequestedOutput(n, binary_data=True) for n in wanted]
                result = self._connect().infer(model, [request], outputs=outputs)
            logits = result.as_numpy(LOGITS)
            server_ms = result.as_numpy(SERVER_MS) if with_server_ms else None
        except RequestFailed:
            raise
        except Exception as exc:  # tritonclient, grpc, gevent and socket errors: each maps to a reason
            failure = self._failure(exc)
            if failure.reason in RETRIED:
                self.reset()
            raise failure from None
        return self._checked(logits, server_ms, len(images))

    def _checked(self, logits: Any, server_ms: Any, n: int) -> tuple[np.ndarray, float, int]:
        want = (n, self.num_classes)
        if not isinstance(logits, np.ndarray) or logits.dtype != np.float32 or logits.shape != want:
            got = f"{getattr(logits, 'dtype', type(logits).__name__)} {getattr(logits, 'shape', '')}"
            raise RequestFailed("garbage", f"logits should be float32 {want}, got {got}")
        if not np.all(np.isfinite(logits)):
            raise RequestFailed("garbage", "logits hold NaN or infinite values")
        ms = math.nan
        if server_ms is not None:
            if not isinstance(server_ms, np.ndarray) or server_ms.shape != (n, 1) or not np.all(server_ms >= 0):
                raise RequestFailed("garbage", f"server_ms should be float32 ({n}, 1) >= 0")
            ms = float(server_ms[0, 0])  # one request runs in one batch: every row has that batch's time
        return logits, ms, logits.nbytes + (0 if server_ms is None else server_ms.nbytes)


class EdgeClient:
    """Classifies images on the edge and asks the near-edge server for the offloaded ones (see the module doc)."""

    def __init__(self, bundle: str | Path, options: ClientOptions, threads: int | None = None) -> None:
        options.check()
        self.options = options
        self.bundle = Bundle.load(bundle, "edge", threads=threads)  # sha256 of router.json and generalist.onnx
        self.router = self.bundle.router
        if not self.router.num_experts:
            raise ClientError(
                f"The bundle {bundle} has no experts: nothing is ever offloaded, use `ate-deploy predict`."
            )
        self.connection = V2Connection(options, self.router.num_classes)
        self.stats = ClientStats()
        self.batches: list[BatchTiming] = []
        self.requests: list[RequestTiming] = []

    def close(self) -> None:
        self.connection.reset()

    def _ask(self, expert: int, images: np.ndarray) -> tuple[np.ndarray | None, RequestTiming]:
        """The expert's logits for ``images`` (None when the request failed for good) and its timing."""
        attempts, failure = 0, None
        start = time.perf_counter()
        while attempts <= self.options.retries:
            if attempts:
                time.sleep(self.options.retry_backoff_ms * 2 ** (attempts - 1) / 1e3)
            attempts += 1
            start = time.perf_counter()
            try:
                logits, server_ms, down = self.connection.infer(expert, images)
            except RequestFailed as exc:
                failure = exc
                if exc.reason not in RETRIED:
                    break
                continue
            timing = RequestTiming(
                expert, len(images), EXPERT, attempts, (time.perf_counter() - start) * 1e3, server_ms,
                images.nbytes, down,
            )  # fmt: skip
            return logits, timing
        assert failure is not None
        self.stats.last_error[failure.reason] = str(failure)
        elapsed = (time.perf_counter() - start) * 1e3
        return None, RequestTiming(expert, len(images), failure.reason, attempts, elapsed, math.nan, images.nbytes, 0)

    def classify(self, images: np.ndarray) -> Prediction:
        """Answer every image: the generalist's answer, or the expert's for offloaded ones the server answered."""
        start = time.perf_counter()
        edge = self.bundle.edge.run(images, "images")
        edge_ms = (time.perf_counter() - start) * 1e3
        request = edge.request
        answered, logits = [], []
        for j in np.unique(request.experts):
            rows = np.flatnonzero(request.experts == j)
            expert_logits, timing = self._ask(int(j), request.images[rows])
            self.requests.append(timing)
            if expert_logits is None:
                self.stats.fallbacks[timing.outcome] += len(rows)
            else:
                answered.append(rows)
                logits.append(expert_logits)
        prediction = combine(*self._answered_part(edge, answered, logits), self.router.routing.fuse_weight)
        self.batches.append(BatchTiming(len(images), len(request), edge_ms, (time.perf_counter() - start) * 1e3))
        self.stats.images += len(images)
        self.stats.offloaded += len(request)
        self.stats.answered_by_expert += int(np.sum(prediction.answered_by >= 0))
        return prediction

    @staticmethod
    def _answered_part(
        edge: EdgeResult, rows: Sequence[np.ndarray], logits: Sequence[np.ndarray]
    ) -> tuple[EdgeResult, ExpertAnswer | None]:
        """The edge result restricted to the requests the server answered (the rest keep G's answer), and the
        answer to exactly those: runtime.combine then merges them as ``ate-deploy predict`` does."""
        request = edge.request
        if not rows:
            return replace(edge, request=OffloadRequest(request.indices[:0], request.experts[:0])), None
        order = np.argsort(np.concatenate(rows), kind="stable")
        picked = np.concatenate(rows)[order]
        all_logits = np.concatenate(logits)[order]
        part = OffloadRequest(request.indices[picked], request.experts[picked])
        answer = ExpertAnswer(part.indices, part.experts, all_logits, np.argmax(all_logits, axis=1))
        return replace(edge, request=part), answer


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 of the finite values (NaN when there are none), rounded to 4 decimals."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if not len(finite):
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan}
    p50, p95, p99 = np.percentile(finite, [50, 95, 99])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "p99": round(float(p99), 4)}


def timing_summary(batches: Sequence[BatchTiming], requests: Sequence[RequestTiming]) -> dict[str, Any]:
    """Percentiles (ms) of the measured times: per image on the edge, per answered request for the link."""
    answered = [r for r in requests if r.outcome == EXPERT]
    return {
        "edge_ms_per_image": percentiles([b.edge_ms / b.images for b in batches]),
        "round_trip_ms": percentiles([r.round_trip_ms for r in answered]),
        "server_ms": percentiles([r.server_ms for r in answered]),
        "transfer_queue_ms": percentiles([r.transfer_queue_ms for r in answered]),
        "requests": len(requests),
        "answered_requests": len(answered),
        "images_per_request": _median([r.images for r in requests]),
    }


def measured_profile(
    batches: Sequence[BatchTiming],
    requests: Sequence[RequestTiming],
    base: Profile,
    name: str | None = None,
    context: dict[str, Any] | None = None,
) -> Profile:
    """A copy of ``base`` whose generalist, expert and link latencies are medians of the client's measurements.

    Per image, as the cost model counts them (a request's times divided by its images; with ``--batch_size 1``
    every request holds one image): edge.latency_ms.generalist = the edge compute; near_edge.latency_ms.expert
    (and medium, the same architecture) = the server's compute; link: bytes_up / bytes_down = the payload bytes
    sent and received, rtt_ms = the measured transfer + queueing minus the transfer times the base's link rates
    give for those bytes (>= 0), so that rtt + t_up + t_down is the measured transfer + queueing. Powers, the link
    rates and edge.latency_ms.medium (not run by the client) come from ``base``."""
    answered = [r for r in requests if r.outcome == EXPERT and math.isfinite(r.server_ms)]
    if not batches or not answered:
        raise ClientError(
            "No measured profile: the run needs at least one request that the server answered with its compute "
            "time (server_ms, which `ate-deploy serve` reports). Offload some images to a running server."
        )

    def per_image(attr: str) -> float:
        return _median([getattr(r, attr) / r.images for r in answered])

    g_ms, e_ms, link_ms = (
        _median([b.edge_ms / b.images for b in batches]),
        per_image("server_ms"),
        per_image("transfer_queue_ms"),
    )
    bytes_up, bytes_down = round(per_image("bytes_up")), round(per_image("bytes_down"))
    t_up, t_down = transfer_ms(bytes_up, base.link.uplink_mbps), transfer_ms(bytes_down, base.link.downlink_mbps)
    rtt = max(0.0, link_ms - t_up - t_down)
    edge = replace(base.edge, latency_ms={**base.edge.latency_ms, "generalist": round(g_ms, 4)})
    near = replace(base.near_edge, latency_ms={**base.near_edge.latency_ms, "expert": round(e_ms, 4)})
    near = replace(near, latency_ms={**near.latency_ms, "medium": round(e_ms, 4)})
    link = replace(base.link, rtt_ms=round(rtt, 4), bytes_up=bytes_up, bytes_down=bytes_down)
    measured = {
        "by": "ate-deploy client",
        **(context or {}),
        "batches": len(batches),
        "requests": len(requests),
        "answered_requests": len(answered),
        "transfer_queue_ms_per_image": round(link_ms, 4),
        "timings_ms": timing_summary(batches, requests),
        "notes": [
            "per image = per request / images in the request; medians over the answered requests",
            "link.rtt_ms = measured transfer + queueing - t_up - t_down at the base's link rates (>= 0)",
            "near_edge.latency_ms.medium = the expert's time (same architecture); edge.latency_ms.medium, powers"
            " and link rates are copied from the base",
        ],
        "base_profile": base.name,
    }
    return Profile(
        name=name or f"{base.name}_client_measured",
        description=f"Generalist, expert and link latencies measured by the edge client; powers from '{base.name}'.",
        edge=edge,
        near_edge=near,
        link=link,
        meta={**base.meta, "measured_client": measured},
    )
