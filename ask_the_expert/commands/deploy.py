"""Command line of the deployment bundle: export, verify, profile, predict, serve, client.

    ate-deploy export --generalist G.ckpt --experts '[runs/experts/]' --data.data_dir data --out bundles/b1
    ate-deploy verify --bundle bundles/b1 --data.data_dir data [--limit 1000]
    ate-deploy profile --bundle bundles/b1 --base configs/profiles/edge_arm_wifi.yaml --out measured.yaml
    ate-deploy predict --bundle bundles/b1 --images batch.npy [--out predictions.csv]
    ate-deploy serve --bundle bundles/b1 [--grpc_port 8001]                        # on the near-edge box
    ate-deploy client --bundle bundles/b1 --url 127.0.0.1:8001 --images batch.npy  # on the edge device

Every subcommand takes ``-c/--config FILE`` and ``--print_config``. ``profile`` and ``predict --images`` need only
numpy and onnxruntime, ``serve`` and ``client`` add the serving packages (the ``serve`` extra); torch is imported
by export, verify and reading a CIFAR split. Bad input ends with a one-paragraph message and exit code 2; a failed
parity check with exit code 1.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ask_the_expert.method.holdout import SelectionSplit
from ask_the_expert.method.router import RouterSpec
from ask_the_expert.utils.atomic import atomic_file
from ask_the_expert.utils.cli import run_cli
from ask_the_expert.utils.errors import SuiteError
from ask_the_expert.utils.options import DataOptions, WandbOptions
from ask_the_expert.utils.outputs import check_output_path, check_replaceable_file, output_lock

if TYPE_CHECKING:
    from ask_the_expert.deploy.runtime import Prediction

Split = Literal["val", "test", "train"]
PREDICTION_COLUMNS = ("index", "prediction", "class", "confidence", "answered_by")


def export(
    *,
    generalist: str,
    out: str,
    experts: list[str] | None = None,
    routing: RouterSpec = RouterSpec(),
    gap: float = 0.005,
    answer: Literal["expert", "fused"] = "expert",
    evaluate_on: Literal["val", "test", "none"] = "val",
    selection: SelectionSplit = SelectionSplit(),
    data: DataOptions = DataOptions(),
    profile: str | None = None,
    force: bool = False,
    torch_export: bool = False,
    triton: bool = False,
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
        routing: k, confidence measure (max_prob, margin, entropy, or learned: a deferral rule fitted on val's
            deferral part and carried in router.json), temperature (fit: on val's selection part) and tau (null: the
            operating point on that part, as ate-evaluate chooses it) of the deployed router.
        gap: operating point: the smallest offload within this accuracy of all-offloaded (0.005 = 0.5 points).
        answer: expert (an offloaded image gets the expert's answer) or fused (the weighted geometric mean of G's
            and the expert's probabilities, its weight chosen on val's selection part; no extra forwards).
        evaluate_on: where the recorded accuracies are measured, on data nothing was chosen or fitted on: val (its
            assessment part) or test; every choice is made on val either way. none uses
            --routing.temperature/--routing.tau as given and records no accuracy.
        selection: how val is split, as ate-evaluate's --selection (the same defaults, so that an export and an
            evaluation of the same models choose the same tau).
        data: the CIFAR-100 folder and split settings, as in training.
        profile: the cost profile YAML the deployment is planned with (the model card says measured or assumed).
        force: replace an existing bundle at --out.
        torch_export: also save torch.export programs (*.pt2).
        triton: also write a Triton model repository of the experts to <out>/triton (ONNX with the input
            normalisation inside and config.pbtxt: UINT8 images in, FP32 logits out, dynamic batching), served by
            `tritonserver --model-repository <out>/triton` without this suite.
        wandb: the W&B run of the export (job type export): it declares the checkpoints it read and logs the bundle
            as a deploy-bundle artifact (mode disabled: no run).
    """
    from ask_the_expert.deploy.export import export_bundle
    from ask_the_expert.method.costs import load_profile
    from datamodules.cifar100 import labelled_images

    plan = load_profile(profile) if profile else None
    images = None if evaluate_on == "none" else labelled_images(data, "val")
    test = labelled_images(data, "test") if evaluate_on == "test" else None
    manifest = export_bundle(
        generalist, experts or [], out, routing=routing, data=images, gap=gap, profile=plan, answer=answer,
        force=force, torch_export=torch_export, triton=triton, batch_size=data.batch_size, holdout=selection,
        assessment=test,
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

    if not atol >= 0:  # NaN too
        raise SuiteError(f"--atol must be a number >= 0 (the largest allowed |logit difference|), got {atol!r}.")
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
    from ask_the_expert.deploy.profile_bundle import BundleTiming, check_profile_output, profile_bundle, write_profile
    from ask_the_expert.method.costs import load_profile

    timing = BundleTiming(batch_size, warmup, repeats, max_experts, threads)
    check_profile_output(out, force)
    with output_lock(out):
        measured = profile_bundle(bundle, load_profile(base), section, timing, name)
        path = write_profile(measured, out, force)
    print(f"Wrote {path}: edge {measured.edge.latency_ms} ms, near edge {measured.near_edge.latency_ms} ms")
    return 0


def _read_images(
    images: str | None, split: Split | None, data: DataOptions, limit: int | None, image_size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 images, labels or None) from a .npy file (checked: a batch of ``image_size`` RGB pixels, at least one)
    or a CIFAR-100 split; exactly one must be given."""
    from ask_the_expert.deploy.runtime import ImageError, check_images

    if (images is None) == (split is None):
        raise SuiteError("Give exactly one input: --images FILE.npy or --split val|test|train (a CIFAR split).")
    if images:
        try:
            pixels = np.load(images, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ImageError(f"Cannot read --images {images!r} as a .npy array ({exc}).") from None
        return check_images(pixels, image_size), None
    from datamodules.cifar100 import labelled_images

    split_images = labelled_images(data, split, limit)
    return split_images.images, split_images.labels


Answers = tuple[np.ndarray, np.ndarray, np.ndarray]  # predictions, confidences, answered_by (-1: the generalist)


def _answers(parts: Sequence[Prediction]) -> Answers:
    """The per-batch predictions' answers, concatenated."""
    return (
        np.concatenate([p.predictions for p in parts]),
        np.concatenate([p.confidences for p in parts]),
        np.concatenate([p.answered_by for p in parts]),
    )


def _check_predictions_out(out: str | None) -> None:
    """Refuse, before any work, a predictions --out that is no file path or an existing file predict did not write."""
    if out:
        check_output_path(out, "--out", folder=False)
        check_replaceable_file(out, "--out", "a predictions CSV", _is_predictions_csv)


def _is_predictions_csv(path: Path) -> bool:
    """Whether ``path`` is a CSV that predict wrote (its header), which a rerun may replace."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return next(csv.reader(f), None) == list(PREDICTION_COLUMNS)
    except (OSError, ValueError):
        return False


def _write_predictions(out: str, names: Sequence[str], answers: Answers) -> None:
    """One CSV row per image: index, prediction, class, confidence, answered_by (one writer, whole or not at all)."""
    with output_lock(out), atomic_file(out) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for i, (p, c, a) in enumerate(zip(*answers, strict=True)):
            writer.writerow([i, int(p), names[p], f"{c:.6f}", int(a)])
    print(f"Wrote {out}")


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
    from ask_the_expert.deploy.runtime import Bundle

    _check_predictions_out(out)
    loaded = Bundle.load(bundle)  # refuse a changed bundle before reading any input
    pixels, labels = _read_images(images, split, data, limit, loaded.router.image_size)
    step = data.batch_size
    answers = _answers([loaded.predict(pixels[s : s + step], send) for s in range(0, len(pixels), step)])
    print(f"{len(answers[0])} images, offloaded {np.mean(answers[2] >= 0):.1%}")
    if labels is not None:
        print(f"accuracy {np.mean(answers[0] == labels):.4f}")
    if out:
        _write_predictions(out, loaded.router.class_names, answers)
    return 0


def serve(
    *,
    bundle: str,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    max_batch_size: int = 64,
    dynamic_batching: bool = True,
    max_queue_delay_us: int = 500,
    max_queue_size: int = 256,
    threads: int | None = None,
) -> int:
    """Serve the bundle's experts over the Open Inference Protocol (KServe V2, HTTP and gRPC) on Triton (PyTriton).

    One model per expert, expert_<j>: input images UINT8 (batch, 32, 32, 3), outputs logits FP32 (batch, 100) and
    server_ms FP32 (batch, 1). Every expert file's sha256 is checked against the manifest first; torch is never
    imported. Runs until SIGINT or SIGTERM. docs/serving.md has the endpoints and the measurements.

    Args:
        bundle: bundle folder (only router.json, manifest.json and the expert files are needed).
        host: address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        http_port: V2 HTTP/REST port.
        grpc_port: V2 gRPC port.
        metrics_port: Prometheus metrics port (/metrics).
        max_batch_size: the most images one request may carry (a larger request is refused with a clear error)
            and the largest batch the dynamic batcher forms.
        dynamic_batching: combine concurrent requests into one model run (false: every request runs alone).
        max_queue_delay_us: how long the batcher may hold a request to fill a batch.
        max_queue_size: requests waiting per model beyond which new ones are refused (UNAVAILABLE), so an
            overloaded server answers at once instead of letting timeouts pile up (with dynamic batching).
        threads: onnxruntime intra-op threads per expert (default: onnxruntime's).
    """
    from ask_the_expert.deploy.serve import ServeOptions, serve_bundle

    options = ServeOptions(
        host, http_port, grpc_port, metrics_port, max_batch_size, dynamic_batching, max_queue_delay_us,
        max_queue_size, threads,
    )  # fmt: skip
    serve_bundle(bundle, options)
    return 0


def client(
    *,
    bundle: str,
    url: str = "127.0.0.1:8001",
    protocol: Literal["grpc", "http"] = "grpc",
    images: str | None = None,
    split: Split | None = None,
    data: DataOptions = DataOptions(),
    limit: int | None = None,
    batch_size: int = 1,
    timeout_s: float = 1.0,
    retries: int = 1,
    retry_backoff_ms: float = 50.0,
    out: str | None = None,
    profile_out: str | None = None,
    base: str | None = None,
    force: bool = False,
    threads: int | None = None,
) -> int:
    """Classify images as the edge device: the generalist and router here, offloaded images to `deploy serve`.

    Every image is answered: a request that times out, finds the server down, is refused or gets a malformed
    answer falls back to the generalist's answer (counted by reason, printed). Prints the counts and the measured
    timings; with --profile_out writes a cost profile whose generalist, expert and link latencies are the
    measured medians (powers and link rates from --base), which `evaluate.py --profiles` reads.

    Args:
        bundle: bundle folder (only router.json, manifest.json and generalist.onnx are needed).
        url: host:port of the server (its gRPC port for grpc, its HTTP port for http).
        protocol: grpc or http (both are the Open Inference Protocol).
        images: .npy file of uint8 images (N, 32, 32, 3).
        split: a CIFAR-100 split to classify instead of --images (val, test or train; needs --data.*).
        data: the CIFAR-100 folder and split settings, as in training.
        limit: use only the first N images of the split.
        batch_size: images the edge classifies at once (1: one frame at a time, one request per offloaded image).
        timeout_s: per-request timeout in seconds.
        retries: retries of a request that timed out or found the server down (0: none).
        retry_backoff_ms: wait before the first retry, doubled for each further one.
        out: CSV with index, prediction, class, confidence, answered_by (as `deploy predict --out`).
        profile_out: cost profile YAML to write from the measured timings (needs --base).
        base: profile giving powers, link rates and the edge's medium-model latency.
        force: overwrite --profile_out.
        threads: onnxruntime intra-op threads of the generalist.
    """
    from ask_the_expert.deploy.client import ClientError, ClientOptions, EdgeClient, measured_profile, timing_summary
    from ask_the_expert.deploy.profile_bundle import check_profile_output, write_profile
    from ask_the_expert.method.costs import load_profile

    options = ClientOptions(url, protocol, timeout_s, retries, retry_backoff_ms)
    options.check()
    if batch_size < 1:
        raise ClientError(f"--batch_size {batch_size} must be >= 1.")
    if (profile_out is None) != (base is None):
        raise ClientError("--profile_out and --base go together: the measured profile takes powers from --base.")
    plan = load_profile(base) if base else None
    if profile_out:
        check_profile_output(profile_out, force, "--profile_out")
    _check_predictions_out(out)
    edge = EdgeClient(bundle, options, threads)
    pixels, labels = _read_images(images, split, data, limit, edge.router.image_size)
    try:
        answers = _answers([edge.classify(pixels[s : s + batch_size]) for s in range(0, len(pixels), batch_size)])
    finally:
        edge.close()
    summary = {**edge.stats.summary(), "timings_ms": timing_summary(edge.batches, edge.requests)}
    if labels is not None:
        summary["accuracy"] = float(np.mean(answers[0] == labels))
    print(json.dumps(summary, indent=2))
    if out:
        _write_predictions(out, edge.router.class_names, answers)
    if profile_out and plan is not None:
        context = {"url": url, "protocol": protocol, "batch_size": batch_size, "images": len(pixels)}
        path = write_profile(measured_profile(edge.batches, edge.requests, plan, context=context), profile_out, force)
        print(f"Wrote {path}")
    return 0


COMMANDS = [export, verify, profile, predict, serve, client]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; bad input -> message on stderr, exit code 2."""
    return run_cli(COMMANDS, argv, "ate-deploy")


if __name__ == "__main__":
    sys.exit(main())
