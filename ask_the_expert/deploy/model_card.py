"""The bundle's model card (MODEL_CARD.md): what the bundle is for, what it was trained and measured on, its limits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ask_the_expert.deploy.bundle_format import RouterConfig
from ask_the_expert.method.costs import Profile


def profile_status(profile: Profile | None) -> str:
    """Whether a cost profile's latencies were measured (``ate-deploy profile`` records how) or assumed."""
    if profile is None:
        return "no cost profile was given at export; latency and energy figures do not apply to this bundle"
    measured = sorted(k.removeprefix("measured_") for k in profile.meta if k.startswith("measured_"))
    if measured:
        return f"`{profile.name}`: latencies MEASURED by `ate-deploy profile` ({', '.join(measured)})"
    return f"`{profile.name}`: ASSUMED numbers, not measurements ({profile.description})"


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
        "## Routing",
        "",
        f"- offload when `{spec.confidence}` confidence of softmax(logits / {spec.temperature:.4g}) < tau = "
        f"{spec.tau if spec.tau is not None else 'n/a (no experts)'}",
        f"- expert choice: Top-{spec.k} (sum of the k most probable classes' probabilities per expert)",
        f"- temperature: {manifest.get('routing', {}).get('temperature_source', 'given')}",
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
