"""The bundle format: file names, the router file (router.json, which embeds ask_the_expert.method.router.RouterSpec)
and the manifest of sha256 hashes. Plain numpy/JSON, shared by the export (torch side) and the torch-free runtime.

A bundle folder holds ``generalist.onnx``, ``expert_<j>.onnx``, ``router.json`` (subsets, the routing spec k /
confidence / temperature / tau, input size and normalisation, class names) and ``manifest.json`` (sha256 of every
file, sources, val accuracies, versions).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ask_the_expert.method.deferral import DeferralRule
from ask_the_expert.method.router import FIT, LEARNED, RouterSpec
from ask_the_expert.method.subsets import class_to_expert, validate_partition
from ask_the_expert.utils.errors import PartitionError, SuiteError
from ask_the_expert.utils.hashing import file_sha256

FORMAT_VERSION = 1
ROUTER_FILE = "router.json"
MANIFEST_FILE = "manifest.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
GENERALIST_FILE = "generalist.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
REEXPORT = "Re-export the bundle with `ate-deploy export` (or copy it again from the export)."


class BundleError(SuiteError):
    """A bundle folder is incomplete, was changed after export, or is inconsistent."""


def expert_file(index: int) -> str:
    """File name of expert ``index`` inside a bundle."""
    return f"expert_{index}.onnx"


@dataclass(frozen=True)
class RouterConfig:
    """The routing rule and input contract of a bundle (the content of router.json)."""

    generalist_file: str
    expert_files: tuple[str, ...]
    subsets: tuple[tuple[int, ...], ...]
    routing: RouterSpec
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    superclass_names: tuple[str, ...]
    fine_to_coarse: tuple[int, ...]
    model_input_size: int
    # ask_the_expert.method.deferral.DeferralRule.to_dict() of a "learned" confidence
    deferral: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_experts(self) -> int:
        return len(self.subsets)

    def deferral_rule(self) -> DeferralRule | None:
        """The deferral rule of a ``learned`` confidence (None for the other measures)."""
        if self.routing.confidence != LEARNED:
            return None
        if self.deferral is None:
            raise BundleError("router.json routes on the learned confidence but holds no deferral rule.")
        return DeferralRule.from_dict(self.deferral)

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
            "routing": self.routing.to_dict(),
            "deferral": self.deferral,
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
            router = cls(
                generalist_file=str(d["generalist"]["file"]),
                expert_files=tuple(str(e["file"]) for e in experts),
                subsets=tuple(tuple(int(c) for c in e["subset"]) for e in experts),
                routing=RouterSpec.from_dict(routing),
                image_size=int(inp["height"]),
                mean=tuple(float(m) for m in inp["mean"]),
                std=tuple(float(s) for s in inp["std"]),
                class_names=tuple(str(n) for n in classes["names"]),
                superclass_names=tuple(str(n) for n in classes["superclass_names"]),
                fine_to_coarse=tuple(int(c) for c in classes["fine_to_coarse"]),
                model_input_size=int(inp["model_input_size"]),
                deferral=d.get("deferral"),
            )
            if int(inp["width"]) != router.image_size or int(inp["channels"]) != 3:
                raise ValueError("input must be square with 3 channels")
        except (KeyError, TypeError, ValueError) as exc:  # RoutingError is a ValueError
            raise BundleError(
                f"{source} is not a valid router file ({type(exc).__name__}: {exc}). {REEXPORT}"
            ) from None
        router.check(source)
        return router

    def check(self, source: str = ROUTER_FILE) -> None:
        """Raise BundleError unless the values are usable (partition, k, measure, temperature, tau, input)."""
        problems = []
        spec = self.routing
        if not 1 <= spec.k <= self.num_classes:
            problems.append(f"k={spec.k} is outside 1..{self.num_classes}")
        if spec.temperature == FIT:
            problems.append("the temperature is 'fit', not the fitted number")
        if spec.confidence == LEARNED:
            try:
                self.deferral_rule()
            except SuiteError as exc:
                problems.append(f"the learned confidence's deferral rule is unusable ({exc})")
        if self.num_experts and spec.tau is None:
            problems.append("tau is missing (a bundle with experts needs one)")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("input mean and std need 3 values each, std > 0")
        if self.image_size < 1:
            problems.append(f"image size {self.image_size} is not positive")
        if len(self.fine_to_coarse) != self.num_classes:
            problems.append(f"fine_to_coarse has {len(self.fine_to_coarse)} entries for {self.num_classes} classes")
        names = [self.generalist_file, *self.expert_files]
        if not all(_plain_name(n) for n in names):
            problems.append(f"model file names {names} must be plain names inside the bundle folder")
        if self.num_experts:
            try:
                validate_partition([list(s) for s in self.subsets], self.num_classes)
            except PartitionError as exc:
                problems.append(str(exc))
        if problems:
            raise BundleError(f"{source} holds unusable values: {'; '.join(problems)}. {REEXPORT}")


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path.parent} is not a bundle: {path.name} ({what}) is missing. {REEXPORT}") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"Cannot read {path.name} ({what}) in {path.parent}: {exc}. {REEXPORT}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path.name} in {path.parent} must hold a JSON object. {REEXPORT}")
    return data


def _plain_name(name: str) -> bool:
    """A file name that stays inside the bundle folder: no folder part, not ``..``, not absolute."""
    return Path(name).name == name and name not in ("", ".", "..") and "\\" not in name


def _inside_name(name: str) -> bool:
    """A relative path (forward slashes) that stays inside the bundle folder: no ``..`` or empty part, not absolute
    (the Triton repository's files lie in a subfolder)."""
    return not name.startswith("/") and all(_plain_name(part) for part in name.split("/"))


def _through_link(folder: Path, name: str) -> bool:
    """Whether ``folder/name`` or a folder on the way to it is a link (which could lead outside the bundle)."""
    parts = name.split("/")
    return any((folder.joinpath(*parts[: i + 1])).is_symlink() for i in range(len(parts)))


def verify_files(folder: Path, manifest: Mapping[str, Any], names: Sequence[str]) -> None:
    """Raise BundleError unless every file the manifest lists has a relative path inside the bundle folder, and each
    named file is listed, present (neither a link nor under one), and hashes as recorded."""
    listed = manifest.get("files")
    if not isinstance(listed, Mapping):
        raise BundleError(f"{MANIFEST_FILE} in {folder} has no 'files' table of sha256 hashes. {REEXPORT}")
    problems = [
        f"{MANIFEST_FILE} lists {name!r}, which is not a path inside the bundle folder"
        for name in listed
        if not _inside_name(str(name))
    ]
    for name in names:
        entry = listed.get(name)
        path = folder / name
        if not _inside_name(name):
            continue  # said above, or refused by RouterConfig.check; never opened
        if not isinstance(entry, Mapping) or "sha256" not in entry:
            problems.append(f"{name} is not listed in {MANIFEST_FILE}")
        elif _through_link(folder, name):
            problems.append(f"{name} is a link (the files of a bundle are its own, inside its folder)")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif file_sha256(path) != entry["sha256"]:
            problems.append(f"{name} has changed since export (sha256 differs from {MANIFEST_FILE})")
    if problems:
        raise BundleError(
            f"Refusing to load the bundle {folder}: {'; '.join(problems)}. The files must be exactly those "
            "the export wrote; copy the bundle again or re-export it."
        )


def routing_record(router: RouterConfig) -> dict[str, Any]:
    """What the manifest records of the router a bundle was exported with: the routing spec and, for the learned
    confidence, its deferral rule."""
    record = router.routing.to_dict()
    if router.deferral is not None:
        record["deferral"] = router.deferral
    return record


def check_routing_record(router: RouterConfig, manifest: Mapping[str, Any], folder: Path) -> None:
    """Raise BundleError unless every routing value of router.json equals the manifest's routing record (the values
    the export chose and measured): a router edited after export is refused even when its hash was recomputed."""
    recorded = manifest.get("routing")
    if not isinstance(recorded, Mapping):
        raise BundleError(f"{MANIFEST_FILE} in {folder} has no routing record. {REEXPORT}")
    differing = {
        key: (value, recorded.get(key)) for key, value in routing_record(router).items() if recorded.get(key) != value
    }
    if differing:
        shown = "; ".join(f"{key}: router.json {a!r}, manifest {b!r}" for key, (a, b) in differing.items())
        raise BundleError(
            f"Refusing to load the bundle {folder}: router.json routes differently from what the export recorded in "
            f"{MANIFEST_FILE} ({shown}), so it was edited after export. {REEXPORT}"
        )
