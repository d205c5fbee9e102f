"""Export cost and inference speed of a deployment bundle against PyTorch eager, in one run.

    python benchmarks/bench_runtime.py [--experts 20] [--images 512] [--batch_size 64] [--threads 2]

1. Random-init checkpoints of the default presets (generalist ``vit_tiny`` scratch32, ``--experts`` ``vit_small``
   scratch32 experts on a superclass partition; 20 = one per superclass) are exported with
   ``ask_the_expert.deploy.export.export_bundle``: wall time and bundle size. With fewer experts the per-expert export
   time is measured and the 20-expert figures are extrapolated (printed as such).
2. Images/s on this CPU, onnxruntime (``ask_the_expert.deploy.runtime``) vs PyTorch eager of the same checkpoints, both
   including preprocessing from uint8, the same thread count, alternating runs, median of ``--repeats``:
   the generalist alone (edge half) and the full routed pipeline (``Bundle.predict`` vs
   ``CollaborativeSystem.predict_step``) at a tau that offloads ``--offload`` of the images.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import quiet_trainer, run_cli

from ask_the_expert.deploy.export import export_bundle, load_export_models, torch_logits
from ask_the_expert.deploy.runtime import Bundle
from ask_the_expert.method.router import RouterSpec, confidence, softmax
from ask_the_expert.method.subsets import superclass_partition
from datamodules.cifar100 import eval_tensors
from lightning_modules.classifier import ClassifierModule
from lightning_modules.expert import ExpertModule


def save(module: torch.nn.Module, path: Path) -> Path:
    trainer = quiet_trainer()
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def pass_rate(fn, images: np.ndarray, batch_size: int) -> float:
    """Images/s of one pass of ``fn`` over ``images`` in batches."""
    start = time.perf_counter()
    for s in range(0, len(images), batch_size):
        fn(images[s : s + batch_size], s)
    return len(images) / (time.perf_counter() - start)


def main(
    experts: int = 20,
    images: int = 512,
    batch_size: int = 64,
    threads: int = 2,
    repeats: int = 5,
    offload: float = 0.3,
    work_dir: str | None = None,
) -> None:
    """Export cost, and onnxruntime against PyTorch eager images/s (see the module docstring).

    Args:
        experts: number of experts (divides 20; 20 = one per superclass).
        images: images per timed pass.
        batch_size: inference batch size.
        threads: torch and onnxruntime intra-op threads.
        repeats: timed passes per runtime; medians are printed.
        offload: offload ratio of the operating point (tau is put at this quantile of G's confidences).
        work_dir: where the checkpoints and the bundle go (default: a new temporary folder).
    """
    torch.set_num_threads(threads)
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench_runtime_"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8)

    torch.manual_seed(0)
    g_path = save(ClassifierModule(role="generalist", arch="vit_tiny"), work / "generalist.ckpt")
    groups = 20 // experts
    e_paths = []
    for j, _ in enumerate(superclass_partition(groups)):
        torch.manual_seed(j + 1)
        e_paths.append(save(ExpertModule(expert_index=j, partition=groups, arch="vit_small"), work / f"e{j}.ckpt"))

    # tau at the --offload quantile of G's confidences on the timed images (T = 1).
    routing = RouterSpec(k=1, confidence="max_prob", temperature=1.0)
    models = load_export_models(g_path, e_paths, routing)
    conf = np.sort(confidence(softmax(torch_logits(models.generalist, eval_tensors(pixels)), 1.0), "max_prob"))
    cut = round(offload * len(conf))
    tau = float((conf[cut - 1] + conf[cut]) / 2)

    start = time.perf_counter()
    manifest = export_bundle(g_path, e_paths, work / "bundle", routing=routing.resolved(tau=tau), force=True)
    export_s = time.perf_counter() - start
    sizes = {name: entry["bytes"] for name, entry in manifest["files"].items()}
    total_mb = sum(sizes.values()) / 1e6
    g_mb, e_mb = sizes["generalist.onnx"] / 1e6, sizes["expert_0.onnx"] / 1e6
    print(f"export: {export_s:.1f} s for generalist + {experts} experts, bundle {total_mb:.1f} MB "
          f"(generalist.onnx {g_mb:.1f} MB, expert_0.onnx {e_mb:.1f} MB)")  # fmt: skip
    if experts != 20:
        # Per-model export time is dominated by the model; the generalist is ~1/4 of an expert's work.
        per_model = export_s / (experts + 1)
        print(f"  extrapolated to 20 experts: ~{per_model * 21:.0f} s (upper bound, {per_model:.1f} s/model), "
              f"bundle {g_mb + 20 * e_mb:.0f} MB")  # fmt: skip

    bundle = Bundle.load(work / "bundle", threads=threads)
    system = models.system
    system.set_temperature(1.0)
    system.tau = tau
    labels = torch.zeros(images, dtype=torch.long)
    index = torch.arange(images)

    def onnx_generalist(batch: np.ndarray, _: int) -> None:
        bundle.edge.run(batch)

    def onnx_pipeline(batch: np.ndarray, _: int) -> None:
        bundle.predict(batch)

    @torch.inference_mode()
    def torch_generalist(batch: np.ndarray, _: int) -> None:
        models.generalist(eval_tensors(batch)).argmax(1)

    @torch.inference_mode()
    def torch_pipeline(batch: np.ndarray, s: int) -> None:
        n = len(batch)
        system.predict_step((eval_tensors(batch), labels[s : s + n], index[s : s + n]))

    offloaded = np.mean(bundle.predict(pixels).answered_by >= 0)
    print(f"operating point: tau={tau:.6f}, offload {offloaded:.1%} of {images} images, batch "
          f"{batch_size}, {threads} threads, median of {repeats} passes")  # fmt: skip
    pairs = {
        "generalist alone": (onnx_generalist, torch_generalist),
        "routed pipeline": (onnx_pipeline, torch_pipeline),
    }
    for name, (ort_fn, torch_fn) in pairs.items():
        ort_fn(pixels[:batch_size], 0), torch_fn(pixels[:batch_size], 0)  # warm-up
        rates: dict[str, list[float]] = {"onnxruntime": [], "torch": []}
        for _ in range(repeats):  # alternate so that background load hits both alike
            rates["onnxruntime"].append(pass_rate(ort_fn, pixels, batch_size))
            rates["torch"].append(pass_rate(torch_fn, pixels, batch_size))
        o, t = statistics.median(rates["onnxruntime"]), statistics.median(rates["torch"])
        print(f"{name:>17}: onnxruntime {o:8.1f} img/s | torch eager {t:8.1f} img/s | ratio {o / t:.2f}x")
    print(f"(work dir: {work})")


if __name__ == "__main__":
    run_cli(main, __doc__)
