"""A fixed tiny evaluation whose outputs were recorded once, so that refactorings can prove they change no result.

The setup depends only on numpy's seeded PCG64 stream (stable across numpy versions and machines): the generated
CIFAR-format folder (tests/fake_cifar100.py, seed 0) and tiny ViT checkpoints whose every weight is drawn from
``numpy.random.default_rng`` (timm's own initialisation is not used, so a timm release cannot change them).

    python tests/golden_evaluation.py      # rewrites tests/data/golden_evaluation.json.gz

The committed file was re-recorded when selection and assessment became disjoint (docs/design.md §6): T is fitted on
val's selection part (80 of the 100 val images; 20 fit the learned deferral rule), not on all of val, so every
probability and confidence moved, while every decision that does not depend on T (G's Top-5 classes, the k = 1 and
oracle experts and their answers, the base and static k = 1 answers) was checked identical to the previous recording
(commit 6e52915). tests/test_golden_evaluation.py checks that today's code reproduces it. Regenerate it only for a
change that is meant to change results, and say so in the commit.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GOLDEN_FILE = HERE / "data" / "golden_evaluation.json.gz"
TINY = {"embed_dim": 16, "depth": 1, "num_heads": 2, "drop_path_rate": 0.0}
VAL_SIZE = 100
K_VALUES = (1, 2, 3, 5)
MEASURES = ("max_prob", "margin", "entropy")
PROFILES = ("configs/profiles/edge_arm_wifi.yaml", "configs/profiles/edge_jetson_ethernet.yaml")


def numpy_weights(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with seeded numpy draws (norm scales near 1, everything else ~N(0, 0.15^2))."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            draw = rng.standard_normal(param.shape).astype(np.float32)
            is_scale = "norm" in name and name.endswith("weight")
            param.copy_(torch.from_numpy(1.0 + 0.1 * draw if is_scale else 0.15 * draw))
    return module


def fit_head(module: torch.nn.Module, images: np.ndarray, labels: np.ndarray, ridge: float) -> torch.nn.Module:
    """Set the classifier head by ridge regression (float64 numpy) of one-hot targets on the frozen features,
    so that the golden models are informative (temperature inside its bounds, routing that means something)."""
    vit = module.model.vit
    mean, std = np.float32([0.5071, 0.4865, 0.4409]), np.float32([0.2673, 0.2564, 0.2762])
    x = (images.astype(np.float32) / 255.0 - mean) / std
    with torch.no_grad():
        features = vit.forward_head(vit.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), True)
    f = features.double().numpy()
    f = np.concatenate([f, np.ones((len(f), 1))], axis=1)
    targets = 450.0 * (np.eye(100)[labels] - 0.01)  # scaled so that the fitted T is near 1
    w = np.linalg.solve(f.T @ f + ridge * np.eye(f.shape[1]), f.T @ targets)
    with torch.no_grad():
        vit.head.weight.copy_(torch.from_numpy(w[:-1].T.astype(np.float32)))
        vit.head.bias.copy_(torch.from_numpy(w[-1].astype(np.float32)))
    return module


def _train_images(data: Path) -> tuple[np.ndarray, np.ndarray]:
    import pickle

    with (data / "cifar-100-python" / "train").open("rb") as f:
        content = pickle.load(f, encoding="latin1")
    images = np.asarray(content["data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(content["fine_labels"], dtype=np.int64)


def build_setup(root: Path) -> dict[str, Path]:
    """Write the data folder and the checkpoints (generalist, base, 4 experts, 4 static experts) under ``root``."""
    sys.path.insert(0, str(HERE))
    from deploy_helpers import save_checkpoint
    from fake_cifar100 import write_fake_cifar100
    from golden_models import classifier, expert

    from ask_the_expert.method.subsets import superclass_partition

    data = write_fake_cifar100(root / "data", 6, 2, seed=0)
    images, labels = _train_images(data)
    paths = {
        "data": data,
        # The generalist's head is fitted with a strong ridge (a weaker model), the base's with a light one.
        "generalist": save_checkpoint(
            fit_head(numpy_weights(classifier("generalist", **TINY), 1), images, labels, 300.0), root / "g.ckpt"
        ),
        "base": save_checkpoint(
            fit_head(numpy_weights(classifier("base", **TINY), 2), images, labels, 30.0), root / "base.ckpt"
        ),
        "experts": root / "experts",
        "static": root / "static",
    }
    for j, subset in enumerate(superclass_partition(5)):
        # Experts see their subset's images and a tenth of the others: good on S_j, poor elsewhere.
        keep = np.isin(labels, subset) | (np.arange(len(labels)) % 10 == j)
        for folder, seed, ridge in ((paths["experts"], 10 + j, 10.0), (paths["static"], 20 + j, 100.0)):
            module = fit_head(numpy_weights(expert(j, 5, **TINY), seed), images[keep], labels[keep], ridge)
            save_checkpoint(module, folder / f"expert_{j}.ckpt")
    return paths


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def collect(out: Path) -> dict:
    """The recorded content of an evaluation folder: records, exact curves (profile-free columns) and summary."""
    result = {}
    for split in ("val", "test"):
        folder = out / split
        records = _read_csv(folder / "records.csv")
        curves: dict[str, dict[str, list]] = {}
        for row in _read_csv(folder / "curves.csv"):
            if row["profile"] != "edge_arm_wifi":  # cost columns are affine in the offload ratio: one profile
                continue
            key = f"{row['policy']}|{row['k']}|{row['confidence']}"
            entry = curves.setdefault(key, {c: [] for c in ("tau", "offload_ratio", "accuracy", "latency_ms")})
            for column in entry:
                entry[column].append(float(row[column]) if row[column] != "" else None)
        result[split] = {
            "records": {column: [r[column] for r in records] for column in records[0]},
            "curves": curves,
            "summary": json.loads((folder / "summary.json").read_text()),
        }
    return result


def run_evaluation(paths: dict[str, Path], out: Path) -> dict:
    """Evaluate the golden setup (test split: val first) through evaluate.py and collect its outputs."""
    from golden_models import evaluate_main

    evaluate_main(paths, out, VAL_SIZE, K_VALUES, MEASURES, [str(REPO / p) for p in PROFILES])
    return collect(out)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_setup(Path(tmp))
        result = run_evaluation(paths, Path(tmp) / "eval")
    GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(GOLDEN_FILE, "wt", encoding="utf-8") as f:
        json.dump(result, f, sort_keys=True)
    print(f"wrote {GOLDEN_FILE}")


if __name__ == "__main__":
    main()
