"""The bundle's model card (MODEL_CARD.md): what the bundle is for, what it was trained and measured on, its limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ask_the_expert.deploy.bundle_format import RouterConfig
from ask_the_expert.method.costs import Profile


def profile_status(profile: Profile | None) -> str:
    """Whether a cost profile's latencies were measured (``ate-deploy profile`` / ``client`` record how) or assumed."""
    if profile is None:
        return "no cost profile was given at export; latency and energy figures do not apply to this bundle"
    measured = sorted(k.removeprefix("measured_") for k in profile.meta if k.startswith("measured_"))
    if measured:
        return f"`{profile.name}`: latencies MEASURED by `ate-deploy profile` or `client` ({', '.join(measured)})"
    return f"`{profile.name}`: ASSUMED numbers, not measurements ({profile.description})"


def answer_rule(fuse_weight: float | None) -> str:
    """What an offloaded image's answer is (core.route.fused_predictions for the fused rule)."""
    if fuse_weight is None:
        return "an offloaded image gets the chosen expert's top-1 class"
    return (
        f"fused: an offloaded image gets argmax of {fuse_weight:.3g} log p_G + {1 - fuse_weight:.3g} log p_E "
        "(the weighted geometric mean of the generalist's and the expert's probabilities; weight fitted on val)"
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def model_card(manifest: Mapping[str, Any], router: RouterConfig, profile: Profile | None) -> str:
    """The markdown model card of a bundle, from its manifest (before the file hashes are added) and router."""
    spec = router.routing
    ev = manifest.get("evaluation") or {}
    lines = [
        "# Model card: collaborative ViT bundle (CIFAR-100)",
        "",
        "## Intended use",
        "",
        "Image classification of 32x32 RGB images into the 100 CIFAR-100 classes by collaborative inference: the "
        "generalist (`generalist.onnx`) runs on the edge device and answers when it is confident; otherwise the "
        "image is sent to the one expert chosen from the generalist's Top-k predictions (`expert_<j>.onnx`, on the "
        "near-edge accelerator). A research artefact for measuring accuracy, latency and energy trade-offs, not "
        "for decisions about people.",
        "",
        "## Routing and the answer rule",
        "",
        f"- offload when `{spec.confidence}` confidence of softmax(logits / {spec.temperature:.4g}) < tau = "
        + (f"{spec.tau:.4g} (router.json holds the exact value)" if spec.tau is not None else "n/a (no experts)"),
        f"- expert choice: Top-{spec.k} (sum of the k most probable classes' probabilities per expert)",
        f"- temperature: {manifest.get('routing', {}).get('temperature_source', 'given')}",
        f"- answer: {answer_rule(spec.fuse_weight) if router.num_experts else 'the generalist answers every image'}",
        "",
        "## Data",
        "",
        "CIFAR-100 (Krizhevsky, 2009). Models were trained on the training file minus a seeded, stratified val "
        "hold-out; temperature and tau were chosen on a part of that val split"
        + (
            f" ({ev.get('chosen_on')}, {ev.get('parts', {}).get('selection')} images) and the accuracies below "
            f"measured on data they were not chosen on ({ev.get('reported_on')}, {ev.get('num_samples')} images)."
            if ev
            else " (no data given at export)."
        ),
        "",
        "## Experts and their subsets",
        "",
    ]
    if router.num_experts:
        lines += [f"| expert | classes | subset accuracy ({ev.get('reported_on', 'val')}) |", "| --- | --- | --- |"]
        accs = {e["index"]: e.get("subset_accuracy") for e in ev.get("experts", [])}
        for j, subset in enumerate(router.subsets):
            names = ", ".join(router.class_names[c] for c in subset[:6]) + (" ..." if len(subset) > 6 else "")
            lines.append(f"| {j} | {len(subset)}: {names} | {_pct(accs.get(j))} |")
    else:
        lines.append("None: a generalist-only bundle answers every image on the edge.")
    lines += ["", "## Models", ""]
    models = manifest.get("models") or {}
    lines += ["| file | role | parameters | latency, batch 1 |", "| --- | --- | --- | --- |"]
    for name, info in models.items():
        role = "generalist (edge)" if name == router.generalist_file else "expert (near edge)"
        lines.append(f"| `{name}` | {role} | {info['parameters']:,} | {info['latency_ms_batch1']:.3g} ms |")
    lines += ["", f"Latencies measured at export: {manifest.get('latency_measured_on', 'not recorded')}."]
    lines += ["", "## Measured accuracy", ""]
    if ev:
        lines.append(f"On {ev.get('reported_on')} (expected figures: nothing was chosen or fitted on these images):")
        lines.append(f"- generalist alone: {_pct(ev.get('generalist_accuracy'))}")
        if "collaboration" in ev:
            c, own = ev["collaboration"], ev.get("on_selection", {}).get("collaboration", {})
            lines.append(
                f"- collaboration at tau: {_pct(c['accuracy'])} with {_pct(c['offload_ratio'])} of images offloaded "
                f"(on {ev.get('chosen_on')}, where tau was chosen: {_pct(own.get('accuracy'))} with "
                f"{_pct(own.get('offload_ratio'))} offloaded)"
            )
            lines.append(f"- every image offloaded: {_pct(ev.get('all_offloaded_accuracy'))}")
    else:
        lines.append("Not measured at export (no data split given).")
    lines += [
        "",
        "## Cost profile",
        "",
        f"- {profile_status(profile)}",
        "",
        "## Serving the two halves",
        "",
        "- Near edge, with this suite: `ate-deploy serve --bundle <this folder>` serves every expert over the "
        "Open Inference Protocol (KServe V2, HTTP and gRPC) on Triton (PyTriton); edge: `ate-deploy client "
        "--bundle <this folder> --url <server>:8001 --images batch.npy` runs the generalist and the router and "
        "sends only the offloaded images, falling back to the generalist's answer when the server is slow or down.",
        "- Near edge without this suite (Triton on a Jetson or GPU server): "
        + (
            "`tritonserver --model-repository <this folder>/triton` (the NGC container "
            "`nvcr.io/nvidia/tritonserver:<yy.mm>-py3`, or Triton's JetPack release on a Jetson) serves "
            "`expert_<j>` with the onnxruntime backend, dynamic batching and the GPU when there is one: input "
            "`images` UINT8 (batch, 32, 32, 3) raw pixels, output `logits` FP32 (batch, 100)."
            if manifest.get("triton_repository")
            else "re-export with `--triton true` to add a Triton model repository (`triton/`)."
        ),
        "",
        "## Limitations",
        "",
        "- Accuracies are on images held out of the training file (val's assessment part) unless they say `test`; "
        "the temperature and tau were chosen on another part of val, so the expected figures are not in-sample.",
        "- Inputs must be 32x32 RGB uint8 (NHWC); other resolutions or domains are out of distribution.",
        "- An expert sees only the images routed to it: when the generalist picks the wrong expert, the answer is "
        "usually wrong (the evaluation's routing hit rate says how often).",
        "- Latency and energy depend on the devices and the link; an assumed profile is an illustration.",
        "",
    ]
    return "\n".join(lines)
