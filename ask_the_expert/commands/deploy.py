"""Command line of the deployment bundle: export, verify, profile, predict.

    ate-deploy export --generalist G.ckpt --experts '[runs/experts/]' --data.data_dir data --out bundles/b1
    ate-deploy verify --bundle bundles/b1 --data.data_dir data [--limit 1000]
    ate-deploy profile --bundle bundles/b1 --base configs/profiles/edge_arm_wifi.yaml --out measured.yaml
    ate-deploy predict --bundle bundles/b1 --images batch.npy [--out predictions.csv]

Every subcommand takes ``-c/--config FILE`` and ``--print_config``. ``profile`` and ``predict --images`` need only
numpy and onnxruntime (torch is imported by export, verify and reading a CIFAR split). Bad input ends with a
one-paragraph message and exit code 2; a failed parity check with exit code 1.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ask_the_expert.method.router import RouterSpec
from ask_the_expert.utils.cli import run_cli
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions, WandbOptions

Split = Literal["val", "test", "train"]


def export(
    *,
    generalist: str,
    out: str,
    experts: list[str] | None = None,
    routing: RouterSpec = RouterSpec(),
    gap: float = 0.005,
    answer: Literal["expert", "fused"] = "expert",
    evaluate_on: Literal["val", "test", "none"] = "val",
    data: DataOptions = DataOptions(),
    profile: str | None = None,
    force: bool = False,
    torch_export: bool = False,
    wandb: WandbOptions = WandbOptions(),
) -> int:
    """Export a generalist and its experts as a deployment bundle folder.

    The folder holds generalist.onnx, expert_<j>.onnx (dynamic batch, self-contained), router.json,
    manifest.json (sha256 of every file, sources, accuracies, versions) and MODEL_CARD.md.

    Args:
        generalist: checkpoint of the edge generalist.
        out: bundle folder to create (must not exist unless --force).
        experts: expert checkpoints (files, folders or quoted globs) partitioning the classes; none: a
            generalist-only bundle.
        routing: k, confidence measure (max_prob, margin, entropy, or learned: a deferral rule fitted on the
            evaluation split and carried in router.json), temperature (fit: on the evaluation split) and tau (null:
            the operating point on that split) of the deployed router.
        gap: operating point: the smallest offload within this accuracy of all-offloaded (0.005 = 0.5 points).
        answer: expert (an offloaded image gets the expert's answer) or fused (the weighted geometric mean of G's
            and the expert's probabilities, its weight fitted on the evaluation split; no extra forwards).
        evaluate_on: split that fits the temperature, chooses tau and measures the recorded accuracies; none uses
            --routing.temperature/--routing.tau as given and records no accuracy.
        data: the CIFAR-100 folder and split settings, as in training.
        profile: the cost profile YAML the deployment is planned with (the model card says measured or assumed).
        force: replace an existing bundle at --out.
        torch_export: also save torch.export programs (*.pt2).
        wandb: the W&B run of the export (job type export): it declares the checkpoints it read and logs the bundle
            as a deploy-bundle artifact (mode disabled: no run).
    """
    from ask_the_expert.deploy.export import export_bundle
    from ask_the_expert.method.costs import load_profile
    from datamodules.cifar100 import labelled_images

    plan = load_profile(profile) if profile else None
    images = None if evaluate_on == "none" else labelled_images(data, evaluate_on)
    manifest = export_bundle(
        generalist, experts or [], out, routing=routing, data=images, gap=gap, profile=plan, answer=answer,
        force=force, torch_export=torch_export, batch_size=data.batch_size,
    )  # fmt: skip
    log_export_run(wandb, out, manifest)
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"Wrote {out}: {len(manifest['files'])} files, {size / 1e6:.1f} MB, {manifest['export_seconds']} s")
    print(json.dumps({"routing": manifest["routing"], "evaluation": manifest["evaluation"]}, indent=2))
    return 0


def log_export_run(options: WandbOptions, out: str, manifest: dict) -> None:
    """A W&B run (job type export) with lineage: the checkpoints it read in, the bundle it wrote out. Its folder is
    the bundle's parent (the bundle holds only its own files); named and grouped by the number of experts and a
    hash of the checkpoints and the routing (ask_the_expert.tracking.run_identity)."""
    from ask_the_expert.tracking.artifacts import log_bundle_artifact, use_checkpoints
    from ask_the_expert.tracking.run_identity import command_identity, new_run_id
    from ask_the_expert.tracking.wandb_logger import command_logger

    folder, sources, run_id = Path(out), manifest["sources"], new_run_id()
    checkpoints = [sources["generalist"]["checkpoint"], *(e["checkpoint"] for e in sources["experts"])]
    shas = [sources["generalist"]["sha256"], *(e["sha256"] for e in sources["experts"])]
    words = ["export", f"{len(sources['experts'])}experts"]
    identity = command_identity(words, [shas, manifest["routing"]], run_id, options.preset)
    logger = command_logger(options, folder.resolve().parent, identity, run_id, job_type="export", tags=["export"])
    if logger is None:
        return
    run = logger.experiment
    run.config.update({"used": {"routing": manifest["routing"], "sources": sources}}, allow_val_change=True)
    use_checkpoints(run, {"generalist": checkpoints[0], "experts": checkpoints[1:]})
    log_bundle_artifact(run, folder)
    run.finish()


def verify(
    *,
    bundle: str,
    data: DataOptions = DataOptions(),
    split: Split = "val",
    limit: int | None = None,
    generalist: str | None = None,
    experts: list[str] | None = None,
    atol: float = 1e-4,
) -> int:
    """Check a bundle against PyTorch on the same images; exit 0 when they agree, else 1.

    Compares with CollaborativeSystem.predict_step, eager logits and the simulated accuracy at tau: routing
    decisions must be identical, logits agree within --atol and the accuracies be equal.

    Args:
        bundle: bundle folder.
        data: the CIFAR-100 folder and split settings, as in training.
        split: split to verify on.
        limit: use only the first N images of the split.
        generalist: generalist checkpoint (default: the manifest's source).
        experts: expert checkpoints (default: the manifest's sources).
        atol: largest allowed |logit difference|.
    """
    from ask_the_expert.deploy.verify import verify_bundle
    from datamodules.cifar100 import labelled_images

    report = verify_bundle(bundle, labelled_images(data, split, limit), generalist, experts, atol, data.batch_size)
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print("PARITY OK" if report["passed"] else "PARITY FAILED")
    return 0 if report["passed"] else 1


def profile(
    *,
    bundle: str,
    base: str,
    out: str,
    force: bool = False,
    section: Literal["edge", "near_edge", "both"] = "both",
    batch_size: int = 32,
    warmup: int = 5,
    repeats: int = 20,
    max_experts: int | None = None,
    threads: int | None = None,
    name: str | None = None,
) -> int:
    """Time the bundle's ONNX models on this machine and write a cost profile with the measured latencies.

    onnxruntime, batch 1 and --batch_size, warm-up, median of repeats; the profile is in the configs/profiles
    format: the measured latencies of --section replace those of --base; powers and link come from --base (they
    cannot be measured).

    Args:
        bundle: bundle folder.
        base: profile giving powers, link and unmeasured sections.
        out: profile YAML to write.
        force: overwrite --out.
        section: which side this machine plays.
        batch_size: the second timed batch size.
        warmup: untimed runs before timing.
        repeats: timed runs; the median is kept.
        max_experts: time only the first N experts.
        threads: onnxruntime intra-op threads.
        name: profile name (default: <base name>_measured).
    """
    from ask_the_expert.deploy.profile_bundle import profile_bundle, write_profile
    from ask_the_expert.method.costs import load_profile

    measured = profile_bundle(
        bundle, load_profile(base), section, batch_size, warmup, repeats, max_experts, threads, name
    )
    path = write_profile(measured, out, force)
    print(f"Wrote {path}: edge {measured.edge.latency_ms} ms, near edge {measured.near_edge.latency_ms} ms")
    return 0


def predict(
    *,
    bundle: str,
    images: str | None = None,
    split: Split | None = None,
    data: DataOptions = DataOptions(),
    limit: int | None = None,
    out: str | None = None,
    send: Literal["images", "tensors"] = "images",
) -> int:
    """Classify images with the bundle (a .npy file of uint8 N x 32 x 32 x 3, or a CIFAR-100 split).

    Prints a summary and, with --out, writes one CSV row per image.

    Args:
        bundle: bundle folder.
        images: .npy file of uint8 images (N, 32, 32, 3).
        split: a CIFAR-100 split to classify instead of --images (val, test or train; needs --data.*).
        data: the CIFAR-100 folder and split settings, as in training.
        limit: use only the first N images of the split.
        out: CSV with index, prediction, class, confidence, answered_by.
        send: edge -> near-edge payload.
    """
    from ask_the_expert.deploy.runtime import Bundle, ImageError

    if (images is None) == (split is None):
        raise SuiteError(
            "predict needs exactly one input: --images FILE.npy or --split val|test|train (a CIFAR split)."
        )
    loaded = Bundle.load(bundle)  # refuse a changed bundle before reading any input
    labels = None
    if images:
        try:
            pixels = np.load(images, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ImageError(f"Cannot read --images {images!r} as a .npy array ({exc}).") from None
    else:
        from datamodules.cifar100 import labelled_images

        split_images = labelled_images(data, split, limit)
        pixels, labels = split_images.images, split_images.labels
    step = data.batch_size
    parts = [loaded.predict(pixels[s : s + step], send) for s in range(0, len(pixels), step)]
    predictions = np.concatenate([p.predictions for p in parts])
    confidences = np.concatenate([p.confidences for p in parts])
    answered_by = np.concatenate([p.answered_by for p in parts])
    print(f"{len(predictions)} images, offloaded {np.mean(answered_by >= 0):.1%}")
    if labels is not None:
        print(f"accuracy {np.mean(predictions == labels):.4f}")
    if out:
        names = loaded.router.class_names
        tmp = Path(f"{out}.partial")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "prediction", "class", "confidence", "answered_by"])
            for i, (p, c, a) in enumerate(zip(predictions, confidences, answered_by, strict=True)):
                writer.writerow([i, int(p), names[p], f"{c:.6f}", int(a)])
        tmp.replace(out)
        print(f"Wrote {out}")
    return 0


COMMANDS = [export, verify, profile, predict]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; bad input -> message on stderr, exit code 2."""
    return run_cli(COMMANDS, argv, "ate-deploy")


if __name__ == "__main__":
    sys.exit(main())
