"""Command line of the deployment bundle: export, verify, profile, predict.

    python -m deploy export --generalist G.ckpt --experts runs/experts/ --data-dir data --out bundles/b1
    python -m deploy verify bundles/b1 --data-dir data [--limit 1000]
    python -m deploy profile bundles/b1 --base configs/profiles/edge_arm_wifi.yaml --out measured.yaml
    python -m deploy predict bundles/b1 --images batch.npy [--out predictions.csv]

``profile`` and ``predict --images`` need only numpy and onnxruntime (torch is imported by export, verify and
reading a CIFAR split). Bad input ends with a one-paragraph message and exit code 2; a failed parity check
with exit code 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.cli import run_command
from core.errors import SuiteError
from core.routing import CONFIDENCE_MEASURES


def _add_data_args(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_argument_group("data (CIFAR-100 folder and split, as in training)")
    group.add_argument(
        "--data-dir", required=required, help="folder containing cifar-100-python/ (the training data_dir)"
    )
    group.add_argument("--split", default="val", choices=("val", "test", "train"), help="split to use (val)")
    group.add_argument(
        "--no-check-integrity", action="store_true", help="load files whose md5 differs from the published ones"
    )
    group.add_argument("--val-size", type=int, default=5000, help="val images held out of train (5000)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split (0)")
    group.add_argument("--limit", type=int, default=None, help="use only the first N images of the split")
    group.add_argument("--batch-size", type=int, default=256, help="inference batch size (256)")


def _load_data(args: argparse.Namespace) -> Any:
    from deploy.export import load_eval_data  # torch: only when a CIFAR split is read

    return load_eval_data(
        args.data_dir, args.split, not args.no_check_integrity, args.val_size, args.split_seed, args.limit
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{export,verify,profile,predict}")

    export = sub.add_parser(
        "export",
        help="write a bundle (ONNX models, router.json, manifest.json) from checkpoints",
        description="Export a generalist and its experts as a bundle folder: generalist.onnx, expert_<j>.onnx "
        "(dynamic batch, self-contained), router.json and manifest.json (sha256 of every file, sources, "
        "val accuracies, versions). With --data-dir the temperature is fitted and tau chosen on the split "
        "unless given.",
    )
    export.add_argument("--generalist", required=True, help="checkpoint of the edge generalist")
    export.add_argument(
        "--experts",
        nargs="*",
        default=[],
        help="expert checkpoints (files, folders or quoted globs) partitioning the classes; none = "
        "generalist-only bundle",
    )
    export.add_argument("--out", required=True, help="bundle folder to create (must not exist unless --force)")
    export.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    export.add_argument("--tau", type=float, default=None, help="offload threshold (default: chosen on data)")
    export.add_argument("--k", type=int, default=1, help="Top-k of the expert choice (1)")
    export.add_argument("--confidence", default="max_prob", choices=CONFIDENCE_MEASURES, help="(max_prob)")
    export.add_argument(
        "--temperature", type=float, default=None, help="softmax temperature (default: fitted on data, else 1)"
    )
    export.add_argument(
        "--gap",
        type=float,
        default=0.005,
        help="operating point: smallest offload within this accuracy of all-offloaded (0.005 = 0.5 points)",
    )
    export.add_argument("--torch-export", action="store_true", help="also save torch.export programs (*.pt2)")
    _add_data_args(export, required=False)

    verify = sub.add_parser(
        "verify",
        help="check a bundle against its checkpoints on a data split",
        description="Run the bundle and PyTorch (CollaborativeSystem.predict_step, eager logits, the simulated "
        "accuracy at tau) on the same images; print the agreement. Exit 0 when routing decisions are "
        "identical, logits agree within --atol and the accuracies are equal, else 1.",
    )
    verify.add_argument("bundle", help="bundle folder")
    verify.add_argument("--generalist", default=None, help="generalist checkpoint (default: manifest source)")
    verify.add_argument("--experts", nargs="*", default=None, help="expert checkpoints (default: manifest)")
    verify.add_argument("--atol", type=float, default=1e-4, help="largest allowed |logit difference| (1e-4)")
    _add_data_args(verify, required=True)

    profile = sub.add_parser(
        "profile",
        help="time the bundle's models here and write a cost profile YAML",
        description="Time every ONNX model of the bundle with onnxruntime (batch 1 and --batch-size, warm-up, "
        "median of repeats) and write a profile in the configs/profiles format: the measured latencies of "
        "--section replace those of --base; powers and link come from --base (they cannot be measured).",
    )
    profile.add_argument("bundle", help="bundle folder")
    profile.add_argument("--base", required=True, help="profile giving powers, link and unmeasured sections")
    profile.add_argument("--out", required=True, help="profile YAML to write")
    profile.add_argument("--force", action="store_true", help="overwrite --out")
    profile.add_argument(
        "--section",
        default="both",
        choices=("edge", "near_edge", "both"),
        help="which side this machine plays (both)",
    )
    profile.add_argument("--batch-size", type=int, default=32, help="the second timed batch size (32)")
    profile.add_argument("--warmup", type=int, default=5, help="untimed runs before timing (5)")
    profile.add_argument("--repeats", type=int, default=20, help="timed runs; the median is kept (20)")
    profile.add_argument("--max-experts", type=int, default=None, help="time only the first N experts")
    profile.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    profile.add_argument("--name", default=None, help="profile name (default: <base name>_measured)")

    predict = sub.add_parser(
        "predict",
        help="classify images with a bundle",
        description="Classify uint8 images (N, 32, 32, 3) from a .npy file, or a CIFAR-100 split, with the "
        "bundle; print a summary and optionally write one CSV row per image.",
    )
    predict.add_argument("bundle", help="bundle folder")
    predict.add_argument("--images", default=None, help=".npy file of uint8 images (N, 32, 32, 3)")
    predict.add_argument("--out", default=None, help="CSV with index, prediction, class, confidence, answered_by")
    predict.add_argument(
        "--send", default="images", choices=("images", "tensors"), help="edge -> near-edge payload (images)"
    )
    _add_data_args(predict, required=False)
    return parser


def _export(args: argparse.Namespace) -> int:
    from deploy.export import export_bundle

    data = _load_data(args) if args.data_dir else None
    manifest = export_bundle(
        args.generalist,
        args.experts,
        args.out,
        tau=args.tau,
        k=args.k,
        confidence=args.confidence,
        temperature=args.temperature,
        data=data,
        gap=args.gap,
        force=args.force,
        torch_export=args.torch_export,
        batch_size=args.batch_size,
    )
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"Wrote {args.out}: {len(manifest['files'])} files, {size / 1e6:.1f} MB, {manifest['export_seconds']} s")
    print(json.dumps({"routing": manifest["routing"], "evaluation": manifest["evaluation"]}, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from deploy.verify import verify_bundle

    report = verify_bundle(args.bundle, _load_data(args), args.generalist, args.experts, args.atol, args.batch_size)
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    print("PARITY OK" if report["passed"] else "PARITY FAILED")
    return 0 if report["passed"] else 1


def _profile(args: argparse.Namespace) -> int:
    from core.costs import load_profile
    from deploy.profile_bundle import profile_bundle, write_profile

    profile = profile_bundle(
        args.bundle,
        load_profile(args.base),
        args.section,
        args.batch_size,
        args.warmup,
        args.repeats,
        args.max_experts,
        args.threads,
        args.name,
    )
    path = write_profile(profile, args.out, args.force)
    print(f"Wrote {path}: edge {profile.edge.latency_ms} ms, near edge {profile.near_edge.latency_ms} ms")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from deploy.runtime import Bundle, ImageError

    if (args.images is None) == (args.data_dir is None):
        raise SuiteError("predict needs exactly one input: --images FILE.npy or --data-dir (a CIFAR-100 split).")
    bundle = Bundle.load(args.bundle)  # refuse a changed bundle before reading any input
    labels = None
    if args.images:
        try:
            images = np.load(args.images, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ImageError(f"Cannot read --images {args.images!r} as a .npy array ({exc}).") from None
    else:
        data = _load_data(args)
        images, labels = data.images, data.labels
    parts = [bundle.predict(images[s : s + args.batch_size], args.send) for s in range(0, len(images), args.batch_size)]
    predictions = np.concatenate([p.predictions for p in parts])
    confidences = np.concatenate([p.confidences for p in parts])
    answered_by = np.concatenate([p.answered_by for p in parts])
    print(f"{len(predictions)} images, offloaded {np.mean(answered_by >= 0):.1%}")
    if labels is not None:
        print(f"accuracy {np.mean(predictions == labels):.4f}")
    if args.out:
        names = bundle.router.class_names
        with Path(args.out).open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "prediction", "class", "confidence", "answered_by"])
            for i, (p, c, a) in enumerate(zip(predictions, confidences, answered_by, strict=True)):
                writer.writerow([i, int(p), names[p], f"{c:.6f}", int(a)])
        print(f"Wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; SuiteError -> message on stderr, exit code 2."""
    args = build_parser().parse_args(argv)
    handler = {"export": _export, "verify": _verify, "profile": _profile, "predict": _predict}[args.command]
    return run_command(lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
