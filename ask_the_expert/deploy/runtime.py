"""Torch-free runtime of an exported bundle: numpy + onnxruntime only (importing it never imports torch).

``Bundle.load`` verifies a bundle folder (ask_the_expert.deploy.bundle_format: every file's sha256 against the manifest,
and router.json against the model files). Routing is ask_the_expert.method.policies.route_batch and the offload rule
ask_the_expert.method.router.offload_mask, the very functions the evaluation uses; each needed expert runs once on its
share of the batch.

The two halves run on different machines: ``EdgeRuntime.run`` answers confident samples locally and returns an
``OffloadRequest`` (what to send, ask_the_expert.deploy.wire); ``NearEdgeRuntime.answer`` runs the chosen experts on it;
``combine`` merges the two. ``Bundle.predict`` is exactly that composition.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from ask_the_expert.deploy.bundle_format import (
    INPUT_NAME,
    MANIFEST_FILE,
    OUTPUT_NAME,
    REEXPORT,
    ROUTER_FILE,
    BundleError,
    RouterConfig,
    check_routing_record,
    read_json,
    verify_files,
)
from ask_the_expert.deploy.wire import ExpertAnswer, OffloadRequest, RequestError
from ask_the_expert.method.routed_batch import fused_predictions, route_batch
from ask_the_expert.method.router import offload_mask
from ask_the_expert.utils.errors import SuiteError

Part = Literal["all", "edge", "near_edge"]
Payload = Literal["images", "tensors"]


class ImageError(SuiteError):
    """Images given to the runtime have the wrong type, shape, dtype or value range."""


def check_images(images: Any, image_size: int) -> np.ndarray:
    """Validate a batch of raw pixels (N, H, W, 3) with values 0..255; returns it as uint8.

    Integer arrays of other dtypes are accepted when every value lies in 0..255; floats are refused because a
    normalised tensor would be normalised twice.
    """
    want = f"(N, {image_size}, {image_size}, 3)"
    if not isinstance(images, np.ndarray):
        raise ImageError(
            f"images must be a numpy array {want} of uint8 pixels, got {type(images).__name__}. "
            "Convert with np.asarray(images, dtype=np.uint8)."
        )
    if images.dtype.kind not in "iu":
        raise ImageError(
            f"images have dtype {images.dtype}; the runtime takes raw uint8 pixels 0..255 {want} and "
            "normalises them itself. Pass decoded image bytes (np.uint8), not float or normalised tensors."
        )
    if images.shape == (image_size, image_size, 3):
        raise ImageError(f"Got a single image of shape {images.shape}; add a batch axis: images[None] -> {want}.")
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
        hint = (
            " It looks channels-first (NCHW): use images.transpose(0, 2, 3, 1)."
            if images.ndim == 4 and images.shape[1] == 3
            else f" Resize or crop to {image_size}x{image_size} RGB first."
        )
        raise ImageError(f"images have shape {images.shape}; the bundle expects {want} (NHWC RGB).{hint}")
    if images.shape[0] == 0:
        raise ImageError(f"images hold no image (shape {images.shape}); pass at least one image {want}.")
    if images.dtype != np.uint8:
        lo, hi = int(images.min()), int(images.max())
        if lo < 0 or hi > 255:
            raise ImageError(
                f"image values span {lo}..{hi}, outside the pixel range 0..255. Pass 8-bit RGB pixels; "
                "rescale other bit depths (e.g. 16-bit: values >> 8) first."
            )
        images = images.astype(np.uint8)
    return images


def preprocess(images: np.ndarray, router: RouterConfig) -> np.ndarray:
    """uint8 NHWC -> normalised float32 NCHW, the same float32 operations as training's eval transform."""
    x = check_images(images, router.image_size).astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(router.mean, dtype=np.float32)) / np.asarray(router.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@dataclass(frozen=True)
class EdgeResult:
    """The generalist's pass over a batch: local answers, routing, and the request for the near edge."""

    logits: np.ndarray
    probs: np.ndarray
    confidences: np.ndarray
    predictions: np.ndarray
    experts: np.ndarray
    offloaded: np.ndarray
    request: OffloadRequest


@dataclass(frozen=True)
class Prediction:
    """Final answers: class, the generalist's routing confidence, and who answered (-1 = generalist)."""

    predictions: np.ndarray
    confidences: np.ndarray
    answered_by: np.ndarray
    edge: EdgeResult
    answer: ExpertAnswer | None


def _session(path: Path, providers: Sequence[str] | None, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types for unreadable models
        raise BundleError(f"onnxruntime cannot load {path.name} ({exc}). {REEXPORT}") from None


def _model_problems(session: ort.InferenceSession, name: str, router: RouterConfig, index: int | None) -> list[str]:
    """How a model file disagrees with router.json (role, expert index, subset, input/output shape)."""
    meta = session.get_modelmeta().custom_metadata_map
    problems = []
    role = "generalist" if index is None else "expert"
    if meta.get("role") != role:
        problems.append(f"{name} holds a {meta.get('role', 'unlabelled')} model, router.json uses it as {role}")
    if index is not None:
        if meta.get("expert_index") != str(index):
            problems.append(f"{name} holds expert {meta.get('expert_index')}, router.json lists it as expert {index}")
        try:
            subset = json.loads(meta.get("subset", "null"))
        except ValueError:
            subset = meta.get("subset")
        if subset != list(router.subsets[index]):
            problems.append(
                f"{name} was trained for classes {subset}, router.json gives it {list(router.subsets[index])}"
            )
    inputs, outputs = session.get_inputs(), session.get_outputs()
    size = router.image_size
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or list(inputs[0].shape[1:]) != [3, size, size]:
        problems.append(f"{name} takes {[(i.name, i.shape) for i in inputs]}, not {INPUT_NAME} (N, 3, {size}, {size})")
    if len(outputs) != 1 or outputs[0].shape[-1] != router.num_classes:
        problems.append(f"{name} outputs {[o.shape for o in outputs]}, not (N, {router.num_classes}) logits")
    return problems


class EdgeRuntime:
    """The edge half: generalist, local answers, and what to send to the near edge."""

    def __init__(self, router: RouterConfig, generalist: ort.InferenceSession) -> None:
        self.router = router
        self.session = generalist
        self._deferral = router.deferral_rule()

    @classmethod
    def load(
        cls, folder: str | Path, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> EdgeRuntime:
        """Load only what the edge needs (router.json, generalist.onnx), verified against the manifest."""
        return Bundle.load(folder, "edge", providers, threads).edge

    def run(self, images: np.ndarray, send: Payload = "images") -> EdgeResult:
        """Run the generalist on uint8 (N, H, W, 3) images and route.

        ``send`` picks the request payload: raw images (1 B per channel value, what the cost model assumes) or
        the preprocessed float32 tensors."""
        if send not in ("images", "tensors"):
            raise RequestError(f"send must be 'images' or 'tensors', got {send!r}.")
        images = check_images(images, self.router.image_size)
        x = preprocess(images, self.router)
        logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        spec, n = self.router.routing, self.router.num_experts
        table = self.router.class_to_expert() if n else None
        routed = route_batch(logits, spec.temperature, [spec.k], [spec.confidence], table, n, self._deferral)
        conf = routed.confidence[spec.confidence]
        experts = routed.experts[spec.k] if n else np.full(len(conf), -1, dtype=np.int64)
        offloaded = offload_mask(conf, spec.tau) if n else np.zeros(len(conf), dtype=bool)
        idx = np.flatnonzero(offloaded)
        request = OffloadRequest(
            indices=idx,
            experts=experts[idx],
            images=images[idx] if send == "images" else None,
            tensors=x[idx] if send == "tensors" else None,
        )
        return EdgeResult(logits, routed.probs, conf, np.argmax(logits, axis=1), experts, offloaded, request)


class NearEdgeRuntime:
    """The near-edge half: runs each requested expert once on its share of a request."""

    def __init__(self, router: RouterConfig, experts: Sequence[ort.InferenceSession]) -> None:
        self.router = router
        self.sessions = list(experts)

    @classmethod
    def load(
        cls, folder: str | Path, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> NearEdgeRuntime:
        """Load only what the near edge needs (router.json, expert files), verified against the manifest."""
        return Bundle.load(folder, "near_edge", providers, threads).near_edge

    def _inputs(self, request: OffloadRequest) -> np.ndarray:
        n, size = len(request), self.router.image_size
        if (request.images is None) == (request.tensors is None):
            raise RequestError("An offload request must carry either images or tensors (exactly one).")
        if request.images is not None:
            if len(request.images) != n:
                raise RequestError(f"The request has {n} indices but {len(request.images)} images.")
            return preprocess(request.images, self.router)
        t = request.tensors
        if not isinstance(t, np.ndarray) or t.dtype != np.float32 or t.shape != (n, 3, size, size):
            raise RequestError(
                f"Request tensors must be float32 ({n}, 3, {size}, {size}) (send='tensors' on the edge);"
                f" got {getattr(t, 'dtype', type(t))} {getattr(t, 'shape', '')}."
            )
        return t

    def answer(self, request: OffloadRequest) -> ExpertAnswer:
        """Expert logits and top-1 for every request entry; each expert runs once, on its entries only."""
        idx, experts = np.asarray(request.indices), np.asarray(request.experts)
        if idx.ndim != 1 or experts.shape != idx.shape or idx.dtype.kind not in "iu" or experts.dtype.kind not in "iu":
            raise RequestError(
                f"Request indices and experts must be 1-D integer arrays of equal length, got {idx.shape} "
                f"({idx.dtype}) and {experts.shape} ({experts.dtype}). Build requests with EdgeRuntime.run."
            )
        if len(experts) and (experts.min() < 0 or experts.max() >= len(self.sessions)):
            raise RequestError(
                f"The request names experts {experts.min()}..{experts.max()}, this bundle has "
                f"{len(self.sessions)}; edge and near edge must load the same bundle."
            )
        logits = np.zeros((len(idx), self.router.num_classes), dtype=np.float32)
        if len(idx):
            x = self._inputs(request)
            for j in np.unique(experts):
                rows = np.flatnonzero(experts == j)
                logits[rows] = self.sessions[int(j)].run([OUTPUT_NAME], {INPUT_NAME: x[rows]})[0]
        return ExpertAnswer(idx.astype(np.int64), experts.astype(np.int64), logits, np.argmax(logits, axis=1))


def combine(edge: EdgeResult, answer: ExpertAnswer | None, fuse_weight: float | None = None) -> Prediction:
    """Merge the edge's local answers with the near edge's answer to its request; with ``fuse_weight`` an
    offloaded sample gets the fused answer of G's and the expert's probabilities (ask_the_expert.method.policies)."""
    predictions = edge.predictions.copy()
    answered_by = np.full(len(predictions), -1, dtype=np.int64)
    if len(edge.request):
        if answer is None or not np.array_equal(answer.indices, edge.request.indices):
            raise RequestError(
                "The expert answer does not match this batch's offload request (different sample indices); "
                "combine each EdgeResult with the answer to its own request."
            )
        if fuse_weight is None:
            predictions[answer.indices] = answer.predictions
        else:
            fused = fused_predictions(edge.probs[answer.indices], answer.logits, [fuse_weight])
            predictions[answer.indices] = fused[:, 0]
        answered_by[answer.indices] = answer.experts
    return Prediction(predictions, edge.confidences, answered_by, edge, answer)


class Bundle:
    """A verified bundle: router, manifest, and the onnxruntime sessions of the loaded part."""

    def __init__(
        self,
        folder: Path,
        router: RouterConfig,
        manifest: dict[str, Any],
        edge: EdgeRuntime | None,
        near_edge: NearEdgeRuntime | None,
    ) -> None:
        self.folder, self.router, self.manifest = folder, router, manifest
        self._edge, self._near_edge = edge, near_edge

    @property
    def edge(self) -> EdgeRuntime:
        if self._edge is None:
            raise BundleError("This bundle was loaded without its edge part; load it with part='all' or 'edge'.")
        return self._edge

    @property
    def near_edge(self) -> NearEdgeRuntime:
        if self._near_edge is None:
            raise BundleError(
                "This bundle was loaded without its near-edge part (or has no experts); load it with "
                "part='all' or 'near_edge'."
            )
        return self._near_edge

    @classmethod
    def load(
        cls,
        folder: str | Path,
        part: Part = "all",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> Bundle:
        """Verify and load a bundle; ``part`` ``edge`` or ``near_edge`` needs (and checks) only that half.

        With ``all`` every file in the manifest is checked, including optional torch.export programs.
        """
        folder = Path(folder)
        if part not in ("all", "edge", "near_edge"):
            raise BundleError(f"part must be 'all', 'edge' or 'near_edge', got {part!r}.")
        if not folder.is_dir():
            raise BundleError(f"Bundle folder {folder} does not exist; pass the folder written by the export.")
        manifest = read_json(folder / MANIFEST_FILE, "hashes of the bundle's files")
        verify_files(folder, manifest, [ROUTER_FILE])
        router = RouterConfig.from_dict(read_json(folder / ROUTER_FILE, "routing rule"))
        check_routing_record(router, manifest, folder)
        needed = {"edge": [router.generalist_file], "near_edge": list(router.expert_files)}
        needed["all"] = [*manifest["files"], *needed["edge"], *needed["near_edge"]]
        verify_files(folder, manifest, list(dict.fromkeys(needed[part])))
        problems: list[str] = []
        edge = near = None
        if part in ("all", "edge"):
            session = _session(folder / router.generalist_file, providers, threads)
            problems += _model_problems(session, router.generalist_file, router, None)
            edge = EdgeRuntime(router, session)
        if part in ("all", "near_edge") and router.num_experts:
            sessions = [_session(folder / f, providers, threads) for f in router.expert_files]
            for j, (f, s) in enumerate(zip(router.expert_files, sessions, strict=True)):
                problems += _model_problems(s, f, router, j)
            near = NearEdgeRuntime(router, sessions)
        if problems:
            raise BundleError(
                f"router.json does not match the model files of {folder}: {'; '.join(problems)}. {REEXPORT}"
            )
        return cls(folder, router, manifest, edge, near)

    def predict(self, images: np.ndarray, send: Payload = "images") -> Prediction:
        """Edge pass, then the near-edge answer to its request (skipped when nothing is offloaded)."""
        edge = self.edge.run(images, send)
        answer = self.near_edge.answer(edge.request) if len(edge.request) else None
        return combine(edge, answer, self.router.routing.fuse_weight)
