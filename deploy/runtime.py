"""Torch-free runtime of an exported bundle: numpy + onnxruntime only (importing it never imports torch).

A bundle folder (written by ``deploy.export.export_bundle``) holds ``generalist.onnx``, ``expert_<j>.onnx``,
``router.json`` (subsets, k, confidence measure, temperature, tau, input size and normalisation, class
names) and ``manifest.json`` (sha256 of every file). ``Bundle.load`` refuses a changed or missing file and a
router.json that does not match the model files. Routing is DESIGN section 3 through ``core.routing``; a
sample is offloaded when its confidence c < tau, and each needed expert runs once on its share of the batch.

The two halves run on different machines: ``EdgeRuntime.run`` answers confident samples locally and returns
an ``OffloadRequest`` (what to send); ``NearEdgeRuntime.answer`` runs the chosen experts on it; ``combine``
merges the two. ``Bundle.predict`` is exactly that composition.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from core.errors import PartitionError, SuiteError
from core.routing import CONFIDENCE_MEASURES, confidence, select_experts, softmax, top_k
from core.subsets import class_to_expert, validate_partition

FORMAT_VERSION = 1
ROUTER_FILE = "router.json"
MANIFEST_FILE = "manifest.json"
GENERALIST_FILE = "generalist.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
Part = Literal["all", "edge", "near_edge"]
Payload = Literal["images", "tensors"]
_REEXPORT = "Re-export the bundle with `python -m deploy export` (or copy it again from the export)."


class BundleError(SuiteError):
    """A bundle folder is incomplete, was changed after export, or is inconsistent."""


class ImageError(SuiteError):
    """Images given to the runtime have the wrong type, shape, dtype or value range."""


class RequestError(SuiteError):
    """An offload request or expert answer is malformed or does not belong to its batch."""


def expert_file(index: int) -> str:
    """File name of expert ``index`` inside a bundle."""
    return f"expert_{index}.onnx"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (expert files are ~90 MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RouterConfig:
    """The routing rule and input contract of a bundle (the content of router.json)."""

    generalist_file: str
    expert_files: tuple[str, ...]
    subsets: tuple[tuple[int, ...], ...]
    k: int
    confidence: str
    temperature: float
    tau: float | None
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    superclass_names: tuple[str, ...]
    fine_to_coarse: tuple[int, ...]
    model_input_size: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_experts(self) -> int:
        return len(self.subsets)

    def class_to_expert(self) -> np.ndarray:
        """Expert that owns each class (int64, num_classes)."""
        return class_to_expert([list(s) for s in self.subsets], self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of router.json."""
        return {
            "format_version": FORMAT_VERSION,
            "generalist": {"file": self.generalist_file},
            "experts": [
                {"index": j, "file": f, "subset": list(s)}
                for j, (f, s) in enumerate(zip(self.expert_files, self.subsets, strict=True))
            ],
            "routing": {
                "k": self.k,
                "confidence": self.confidence,
                "temperature": self.temperature,
                "tau": self.tau,
                "offload_when": "confidence < tau",
            },
            "input": {
                "layout": "NHWC",
                "dtype": "uint8",
                "height": self.image_size,
                "width": self.image_size,
                "channels": 3,
                "mean": list(self.mean),
                "std": list(self.std),
                "normalise": "(pixel / 255 - mean) / std per channel, then NCHW float32",
                "model_input_size": self.model_input_size,
            },
            "classes": {
                "names": list(self.class_names),
                "superclass_names": list(self.superclass_names),
                "fine_to_coarse": list(self.fine_to_coarse),
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = ROUTER_FILE) -> RouterConfig:
        """Parse and check router.json content; every problem raises BundleError."""
        try:
            if d["format_version"] != FORMAT_VERSION:
                raise ValueError(f"format_version {d['format_version']!r}, this runtime reads {FORMAT_VERSION}")
            experts, routing, inp, classes = d["experts"], d["routing"], d["input"], d["classes"]
            if [e["index"] for e in experts] != list(range(len(experts))):
                raise ValueError("experts must be listed with index 0, 1, 2, ... in order")
            tau = routing["tau"]
            router = cls(
                generalist_file=str(d["generalist"]["file"]),
                expert_files=tuple(str(e["file"]) for e in experts),
                subsets=tuple(tuple(int(c) for c in e["subset"]) for e in experts),
                k=int(routing["k"]),
                confidence=str(routing["confidence"]),
                temperature=float(routing["temperature"]),
                tau=None if tau is None else float(tau),
                image_size=int(inp["height"]),
                mean=tuple(float(m) for m in inp["mean"]),
                std=tuple(float(s) for s in inp["std"]),
                class_names=tuple(str(n) for n in classes["names"]),
                superclass_names=tuple(str(n) for n in classes["superclass_names"]),
                fine_to_coarse=tuple(int(c) for c in classes["fine_to_coarse"]),
                model_input_size=int(inp["model_input_size"]),
            )
            if int(inp["width"]) != router.image_size or int(inp["channels"]) != 3:
                raise ValueError("input must be square with 3 channels")
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"{source} is not a valid router file ({type(exc).__name__}: {exc}). {_REEXPORT}"
            ) from None
        router.check(source)
        return router

    def check(self, source: str = ROUTER_FILE) -> None:
        """Raise BundleError unless the values are usable (partition, k, measure, temperature, tau, input)."""
        problems = []
        if not 1 <= self.k <= self.num_classes:
            problems.append(f"k={self.k} is outside 1..{self.num_classes}")
        if self.confidence not in CONFIDENCE_MEASURES:
            problems.append(f"confidence {self.confidence!r} is not one of {', '.join(CONFIDENCE_MEASURES)}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            problems.append(f"temperature {self.temperature!r} is not a finite number > 0")
        if self.num_experts and (self.tau is None or not math.isfinite(self.tau)):
            problems.append(f"tau {self.tau!r} is not a finite number (a bundle with experts needs one)")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("input mean and std need 3 values each, std > 0")
        if self.image_size < 1:
            problems.append(f"image size {self.image_size} is not positive")
        if len(self.fine_to_coarse) != self.num_classes:
            problems.append(f"fine_to_coarse has {len(self.fine_to_coarse)} entries for {self.num_classes} classes")
        names = [self.generalist_file, *self.expert_files]
        if any(Path(n).name != n or n in ("", ".", "..") for n in names):
            problems.append(f"model file names {names} must be plain names inside the bundle folder")
        if self.num_experts:
            try:
                validate_partition([list(s) for s in self.subsets], self.num_classes)
            except PartitionError as exc:
                problems.append(str(exc))
        if problems:
            raise BundleError(f"{source} holds unusable values: {'; '.join(problems)}. {_REEXPORT}")


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


def route(logits: np.ndarray, router: RouterConfig) -> tuple[np.ndarray, np.ndarray]:
    """(confidence (N,), chosen expert (N,) int64, -1 without experts) of the generalist's logits."""
    probs = softmax(logits, router.temperature)
    conf = confidence(probs, router.confidence)
    if router.num_experts == 0:
        return conf, np.full(len(conf), -1, dtype=np.int64)
    classes, top_probs = top_k(probs, router.k)
    return conf, select_experts(classes, top_probs, router.class_to_expert(), router.num_experts)


@dataclass(frozen=True)
class OffloadRequest:
    """What the edge sends: batch positions, each one's expert, and raw images or model-ready tensors."""

    indices: np.ndarray
    experts: np.ndarray
    images: np.ndarray | None = None
    tensors: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def to_bytes(self) -> bytes:
        """Serialise (numpy .npz, no pickle) for sending to the near edge."""
        arrays = {"indices": self.indices, "experts": self.experts}
        arrays.update({k: v for k, v in (("images", self.images), ("tensors", self.tensors)) if v is not None})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> OffloadRequest:
        """Inverse of to_bytes."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return cls(z["indices"], z["experts"], z.get("images"), z.get("tensors"))
        except (OSError, ValueError, KeyError) as exc:
            raise RequestError(
                f"Cannot read the offload request ({type(exc).__name__}: {exc}). Send the bytes of "
                "OffloadRequest.to_bytes() unchanged."
            ) from None


@dataclass(frozen=True)
class EdgeResult:
    """The generalist's pass over a batch: local answers, routing, and the request for the near edge."""

    logits: np.ndarray
    confidences: np.ndarray
    predictions: np.ndarray
    experts: np.ndarray
    offloaded: np.ndarray
    request: OffloadRequest


@dataclass(frozen=True)
class ExpertAnswer:
    """The near edge's reply: for each request entry, the expert's logits and its top-1 class."""

    indices: np.ndarray
    experts: np.ndarray
    logits: np.ndarray
    predictions: np.ndarray


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
        raise BundleError(f"onnxruntime cannot load {path.name} ({exc}). {_REEXPORT}") from None


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
        conf, experts = route(logits, self.router)
        # float64 like core.sweep.apply_threshold: a float32 comparison would round tau first.
        offloaded = (
            conf.astype(np.float64) < self.router.tau if self.router.num_experts else np.zeros(len(conf), dtype=bool)
        )
        idx = np.flatnonzero(offloaded)
        request = OffloadRequest(
            indices=idx,
            experts=experts[idx],
            images=images[idx] if send == "images" else None,
            tensors=x[idx] if send == "tensors" else None,
        )
        return EdgeResult(logits, conf, np.argmax(logits, axis=1), experts, offloaded, request)


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


def combine(edge: EdgeResult, answer: ExpertAnswer | None) -> Prediction:
    """Merge the edge's local answers with the near edge's answer to its request."""
    predictions = edge.predictions.copy()
    answered_by = np.full(len(predictions), -1, dtype=np.int64)
    if len(edge.request):
        if answer is None or not np.array_equal(answer.indices, edge.request.indices):
            raise RequestError(
                "The expert answer does not match this batch's offload request (different sample indices); "
                "combine each EdgeResult with the answer to its own request."
            )
        predictions[answer.indices] = answer.predictions
        answered_by[answer.indices] = answer.experts
    return Prediction(predictions, edge.confidences, answered_by, edge, answer)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path.parent} is not a bundle: {path.name} ({what}) is missing. {_REEXPORT}") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"Cannot read {path.name} ({what}) in {path.parent}: {exc}. {_REEXPORT}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path.name} in {path.parent} must hold a JSON object. {_REEXPORT}")
    return data


def verify_files(folder: Path, manifest: Mapping[str, Any], names: Sequence[str]) -> None:
    """Raise BundleError unless each named file is listed in the manifest, present, and hashes as recorded."""
    listed = manifest.get("files")
    if not isinstance(listed, Mapping):
        raise BundleError(f"{MANIFEST_FILE} in {folder} has no 'files' table of sha256 hashes. {_REEXPORT}")
    problems = []
    for name in names:
        entry = listed.get(name)
        path = folder / name
        if not isinstance(entry, Mapping) or "sha256" not in entry:
            problems.append(f"{name} is not listed in {MANIFEST_FILE}")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{name} has changed since export (sha256 differs from {MANIFEST_FILE})")
    if problems:
        raise BundleError(
            f"Refusing to load the bundle {folder}: {'; '.join(problems)}. The files must be exactly those "
            "the export wrote; copy the bundle again or re-export it."
        )


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
        manifest = _read_json(folder / MANIFEST_FILE, "hashes of the bundle's files")
        verify_files(folder, manifest, [ROUTER_FILE])
        router = RouterConfig.from_dict(_read_json(folder / ROUTER_FILE, "routing rule"))
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
                f"router.json does not match the model files of {folder}: {'; '.join(problems)}. {_REEXPORT}"
            )
        return cls(folder, router, manifest, edge, near)

    def predict(self, images: np.ndarray, send: Payload = "images") -> Prediction:
        """Edge pass, then the near-edge answer to its request (skipped when nothing is offloaded)."""
        edge = self.edge.run(images, send)
        answer = self.near_edge.answer(edge.request) if len(edge.request) else None
        return combine(edge, answer)
