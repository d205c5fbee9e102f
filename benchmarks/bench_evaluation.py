"""Benchmark of the collaborative evaluation (issue 4 performance targets), all ratios measured in one run.

    python benchmarks/bench_evaluation.py [--n 512] [--repeats 5] [--experts 20] [--batch_size 512]

Random-init ViTs (G: embed 64, depth 2; experts: embed 96, depth 3) on random 32x32 images, CPU. Reports:

1. evaluation (trainer.validate on CollaborativeSystem + the callback's sweep, k = 1) vs the floor (one G pass plus
   one expert pass per sample, plain loops over the same loader); target <= 1.15x. Labels are set to G's top-1
   so that oracle routing needs no extra pairs, as with an accurate G; with k = 1 2 3 5 the floor is G plus the
   distinct (sample, expert) pairs, reported too.
2. running every expert on every sample vs the evaluation; target >= 10x with 20 experts.
3. the sweep (ask_the_expert.method.policies.evaluate_policies) for 10,000 samples x 4 k x all policies x 2 profiles;
   target < 1 s.
4. records memory per sample (O(k)) vs N x experts x 100 float32 logits.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import quiet_trainer, run_cli
from torch.utils.data import DataLoader, TensorDataset

from ask_the_expert.method.costs import load_profile
from ask_the_expert.method.policies import evaluate_policies, merge_records
from ask_the_expert.method.subsets import superclass_partition
from callbacks.collaborative_eval import CollaborativeInferenceCallback
from lightning_modules.classifier import ClassifierModule
from lightning_modules.collaborative import CollaborativeSystem

PROFILE_DIR = Path(__file__).resolve().parents[1] / "configs" / "profiles"
PROFILES = [PROFILE_DIR / "edge_arm_wifi.yaml", PROFILE_DIR / "edge_jetson_ethernet.yaml"]


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function; the functions alternate within every repeat, so that load from other
    processes on the machine hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def vit(seed: int, embed_dim: int, depth: int, heads: int) -> ClassifierModule:
    torch.manual_seed(seed)
    return ClassifierModule(embed_dim=embed_dim, depth=depth, num_heads=heads, drop_path_rate=0.0).eval()


@torch.no_grad()
def passes(models: list[torch.nn.Module], loader: DataLoader) -> None:
    for batch in loader:
        for model in models:
            model(batch[0])


def evaluate(system: CollaborativeSystem, loader: DataLoader) -> CollaborativeInferenceCallback:
    callback = CollaborativeInferenceCallback(out_dir=None, profiles=PROFILES, print_table=False)
    trainer = quiet_trainer(callbacks=[callback])
    trainer.validate(system, dataloaders=loader, verbose=False)
    return callback


def synthetic_records(n: int, ks: list[int], num_experts: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 100, n)
    probs = np.sort(rng.dirichlet(np.ones(100) * 0.1, n).astype(np.float32), axis=1)[:, ::-1][:, : max(ks)]
    rec = {"index": np.arange(n), "label": label, "g_topk_classes": rng.integers(0, 100, (n, max(ks)))}
    rec["g_topk_probs"], rec["conf_max_prob"] = probs, probs[:, 0]
    for k in ks:
        rec[f"expert_k{k}"] = rng.integers(0, num_experts, n)
        rec[f"pred_k{k}"] = np.where(rng.random(n) < 0.8, label, rng.integers(0, 100, n))
        rec[f"static_pred_k{k}"] = np.where(rng.random(n) < 0.7, label, rng.integers(0, 100, n))
    rec["oracle_expert"] = rng.integers(0, num_experts, n)
    rec["pred_oracle"] = np.where(rng.random(n) < 0.85, label, rng.integers(0, 100, n))
    rec["pred_base"] = np.where(rng.random(n) < 0.75, label, rng.integers(0, 100, n))
    return rec


def main(n: int = 512, experts: int = 20, repeats: int = 5, batch_size: int = 512) -> None:
    """Collaborative evaluation against its floors, and the sweep (see the module docstring).

    Args:
        n: evaluated samples.
        experts: number of experts (divides 20).
        repeats: repeats per timing (median).
        batch_size: batch size of every pass.
    """
    torch.set_grad_enabled(False)

    g = vit(0, 64, 2, 2)
    expert_vits = [vit(1 + j, 96, 3, 3) for j in range(experts)]
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.cat([g(x).argmax(-1) for x in images.split(batch_size)])  # an "accurate" G
    loader = DataLoader(TensorDataset(images, labels, torch.arange(n)), batch_size=batch_size)
    subsets = superclass_partition(20 // experts)

    def system(ks: list[int]) -> CollaborativeSystem:
        return CollaborativeSystem(g, expert_vits, subsets, k_values=ks, temperature=1.0)

    one = system([1])
    multi = system([1, 2, 3, 5])
    evaluate(one, loader)  # warm-up (allocations, lazy imports)
    pairs = evaluate(multi, loader).reports["val"].meta["forwards"]["expert"]
    repeated = DataLoader(TensorDataset(images.repeat(pairs // n + 1, 1, 1, 1)[:pairs]), batch_size)
    t = median_times(
        {
            "floor": lambda: passes([g, expert_vits[0]], loader),
            "eval": lambda: evaluate(one, loader),
            "floor_multi": lambda: (passes([g], loader), passes([expert_vits[0]], repeated)),
            "eval_multi": lambda: evaluate(multi, loader),
        },
        repeats,
    )
    t_floor, t_eval, t_floor_multi, t_eval_multi = t["floor"], t["eval"], t["floor_multi"], t["eval_multi"]
    t_all = median_times({"all": lambda: passes([g, *expert_vits], loader)}, 1)["all"]

    rec = synthetic_records(10_000, [1, 2, 3, 5], experts)
    profiles = [load_profile(p) for p in PROFILES]
    t_sweep = median_times({"sweep": lambda: evaluate_policies(rec, profiles)}, repeats)["sweep"]
    report = evaluate_policies(rec, profiles)

    real = merge_records([multi.evaluation_records(batch) for batch in loader])  # the k = 1 2 3 5 records
    rec_bytes = sum(v.nbytes for v in real.values())
    logits_bytes = n * experts * 100 * 4

    print(f"CPU threads: {torch.get_num_threads()}, N = {n}, experts = {experts}, repeats = {repeats}")
    print(f"1. evaluation k=1 (Lightning + routing + sweep)   {t_eval:7.3f} s")
    print(
        f"   floor: G pass + one expert pass per sample     {t_floor:7.3f} s   ratio {t_eval / t_floor:.3f}x "
        f"(target <= 1.15x)"
    )
    print(f"   evaluation k=1,2,3,5 ({pairs} expert pairs)    {t_eval_multi:7.3f} s")
    print(
        f"   floor: G pass + {pairs} expert forwards         {t_floor_multi:7.3f} s   ratio "
        f"{t_eval_multi / t_floor_multi:.3f}x"
    )
    print(
        f"2. every expert on every sample ({experts} experts) {t_all:7.3f} s   {t_all / t_eval:.1f}x the "
        f"k=1 evaluation (target >= 10x), {t_all / t_eval_multi:.1f}x the k=1,2,3,5 one"
    )
    print(
        f"3. sweep of 10,000 samples x 4 k x {len(report.curves)} curves x {len(profiles)} profiles "
        f"(evaluate_policies): {t_sweep:.3f} s (target < 1 s)"
    )
    print(
        f"4. records: {rec_bytes / n:.0f} B/sample with k = 1 2 3 5 (O(k)); all experts' logits would be "
        f"{logits_bytes / n:.0f} B/sample ({logits_bytes / rec_bytes:.0f}x more); "
        f"{len(real['index'])} samples"
    )


if __name__ == "__main__":
    run_cli(main, __doc__)
