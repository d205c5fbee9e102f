"""Deployment bundle: export, torch-free runtime parity, edge/near-edge split, tampering, bad input, profiling."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import BUNDLE_PROFILE, BUNDLE_TEMPERATURE, BUNDLE_VAL_SIZE, REPO_ROOT

from ask_the_expert.commands.deploy import main
from ask_the_expert.deploy.bundle_format import MANIFEST_FILE, MODEL_CARD_FILE, ROUTER_FILE, BundleError
from ask_the_expert.deploy.export import ExportError, export_bundle, load_export_models, torch_logits
from ask_the_expert.deploy.model_card import profile_status
from ask_the_expert.deploy.profile_bundle import BundleTiming, profile_bundle, write_profile
from ask_the_expert.deploy.runtime import Bundle, EdgeRuntime, ImageError, NearEdgeRuntime, combine, preprocess
from ask_the_expert.deploy.triton_repo import TRITON_FOLDER
from ask_the_expert.deploy.verify import verify_bundle
from ask_the_expert.deploy.wire import ExpertAnswer, OffloadRequest, RequestError
from ask_the_expert.method.costs import load_profile
from ask_the_expert.method.routed_batch import route_batch
from ask_the_expert.method.router import RouterSpec, offload_mask
from ask_the_expert.method.subsets import class_to_expert, superclass_partition
from ask_the_expert.method.sweep import choose_operating_point, sweep_thresholds
from ask_the_expert.utils.errors import PartitionError, RoutingError, SuiteError
from ask_the_expert.utils.hashing import file_sha256
from datamodules.cifar100 import LabelledImages, eval_tensors


def _data_args(root: Path) -> list[str]:
    """The ``--data.*`` options of a small val split of the fake CIFAR-100 folder."""
    return [
        "--data.data_dir", str(root), "--data.check_integrity", "false", "--data.val_size", str(BUNDLE_VAL_SIZE),
        "--data.num_workers", "0",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def bundle(bundle_dir) -> Bundle:
    return Bundle.load(bundle_dir)


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def _rewrite_router(folder: Path, edit, record: bool = False) -> None:
    """Edit router.json and re-hash it in the manifest, as someone hand-assembling a bundle would; with ``record``
    also the manifest's routing record (a bundle re-tuned by hand: the routing it loads with)."""
    router = json.loads((folder / ROUTER_FILE).read_text())
    edit(router)
    (folder / ROUTER_FILE).write_text(json.dumps(router))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][ROUTER_FILE]["sha256"] = file_sha256(folder / ROUTER_FILE)
    if record:
        manifest["routing"].update(router["routing"])
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def _assert_decisions_are_the_core_policy(edge, logits: np.ndarray, spec: RouterSpec, table: np.ndarray | None):
    """The runtime's routing of ``logits`` is ask_the_expert.method.policies.route_batch +
    ask_the_expert.method.router.offload_mask."""
    num_experts = 0 if table is None else int(table.max()) + 1
    routed = route_batch(logits, spec.temperature, [spec.k], [spec.confidence], table, num_experts)
    conf = routed.confidence[spec.confidence]
    np.testing.assert_array_equal(edge.confidences, conf)
    np.testing.assert_array_equal(edge.predictions, routed.topk_classes[:, 0])
    if table is None:
        assert np.all(edge.experts == -1) and not edge.offloaded.any()
    else:
        np.testing.assert_array_equal(edge.experts, routed.experts[spec.k])
        np.testing.assert_array_equal(edge.offloaded, offload_mask(conf, spec.tau))
    np.testing.assert_array_equal(edge.request.indices, np.flatnonzero(edge.offloaded))
    np.testing.assert_array_equal(edge.request.experts, edge.experts[edge.offloaded])


# ----------------------------------------------------------------------------------------------- export
def test_export_writes_a_complete_self_contained_bundle(bundle_dir, checkpoints, tau):
    g, experts = checkpoints
    top = sorted(p.name for p in bundle_dir.iterdir())
    expected = ["generalist.onnx", *(f"expert_{j}.onnx" for j in range(4)), ROUTER_FILE, MANIFEST_FILE, MODEL_CARD_FILE]
    assert top == sorted([*expected, TRITON_FOLDER])
    files = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == files - {MANIFEST_FILE}  # the model card and the Triton repository too
    assert {f"{TRITON_FOLDER}/expert_{j}/1/model.onnx" for j in range(4)} < files
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_sha256(bundle_dir / name)
        assert entry["bytes"] == (bundle_dir / name).stat().st_size
    assert manifest["sources"]["generalist"]["sha256"] == file_sha256(g)
    assert [e["sha256"] for e in manifest["sources"]["experts"]] == [file_sha256(p) for p in experts]
    assert {"torch", "timm", "onnx"} <= set(manifest["versions"])
    modules = [
        load_export_models(g, [], RouterSpec()).generalist,
        *load_export_models(g, experts, RouterSpec()).experts,
    ]
    params = [sum(p.numel() for p in m.model.parameters()) for m in modules]
    assert [m["parameters"] for m in manifest["models"].values()] == params
    assert list(manifest["models"]) == expected[:5] and all(
        m["latency_ms_batch1"] > 0 for m in manifest["models"].values()
    )
    assert manifest["triton_repository"] == TRITON_FOLDER
    evaluation = manifest["evaluation"]
    # Measured on val's assessment part (half of val); tau was given, so nothing else was chosen on val.
    assert evaluation["num_samples"] == BUNDLE_VAL_SIZE // 2 and len(evaluation["experts"]) == 4
    assert evaluation["reported_on"] == "val assessment part" and evaluation["on_selection"]["num_samples"] == 30
    assert evaluation["collaboration"]["tau"] == tau
    spec = RouterSpec(k=1, confidence="max_prob", temperature=BUNDLE_TEMPERATURE, tau=tau)
    assert manifest["routing"] == {**spec.to_dict(), "temperature_source": "given"}
    base = load_profile(BUNDLE_PROFILE)
    assert manifest["profile"] == {"name": base.name, "description": base.description}
    router = json.loads((bundle_dir / ROUTER_FILE).read_text())
    assert [e["subset"] for e in router["experts"]] == superclass_partition(5)
    assert router["routing"] == {**router["routing"], "k": 1, "tau": tau, "temperature": BUNDLE_TEMPERATURE}
    assert router["routing"] == spec.to_dict()
    assert len(router["classes"]["names"]) == 100 and len(router["classes"]["superclass_names"]) == 20


def test_model_card_names_the_routing_and_the_assumed_profile(bundle_dir, tau):
    card = (bundle_dir / MODEL_CARD_FILE).read_text(encoding="utf-8")
    assert card.startswith("# Model card")
    assert f"< tau = {tau:.4g} (router.json holds the exact value)" in card
    assert (
        f"softmax(logits / {BUNDLE_TEMPERATURE:.4g})" in card
        and "answer: an offloaded image gets the chosen expert's" in card
    )
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    for name, info in manifest["models"].items():
        assert f"| `{name}` | " in card and f"| {info['parameters']:,} | {info['latency_ms_batch1']:.3g} ms |" in card
    assert "tritonserver --model-repository <this folder>/triton" in card and "ate-deploy serve" in card
    assert "temperature: given" in card
    name = load_profile(BUNDLE_PROFILE).name
    assert f"`{name}`: ASSUMED numbers, not measurements" in card and "MEASURED" not in card
    assert card.count("| expert |") == 1 and all(f"\n| {j} | 25: " in card for j in range(4))


def test_the_chosen_tau_is_the_middle_of_the_chosen_confidence_gap():
    conf = np.array([0.1, 0.2, 0.2, 0.4, 0.9])
    # Offloading the two lowest-confidence samples (conf 0.1, 0.2...) fixes them; the rest are right locally.
    curve = sweep_thresholds(conf, np.array([0, 0, 0, 1, 1], dtype=bool), np.ones(5, dtype=bool))
    assert choose_operating_point(curve, gap=0.0)["tau"] == pytest.approx((0.2 + 0.4) / 2)  # offload conf < 0.4
    assert choose_operating_point(curve, gap=1.0)["tau"] < 0.1  # offloading nothing is within a gap of 1
    all_fixed = sweep_thresholds(conf, np.zeros(5, dtype=bool), np.ones(5, dtype=bool))
    assert choose_operating_point(all_fixed, gap=0.0)["tau"] > 0.9  # offload all


# ------------------------------------------------------------------------------------------- parity
def test_preprocessing_equals_the_training_eval_transform(bundle, images):
    np.testing.assert_array_equal(preprocess(images, bundle.router), eval_tensors(images).numpy())


@torch.inference_mode()
def test_runtime_matches_collaborative_system(bundle, checkpoints, images, tau):
    g, experts = checkpoints
    models = load_export_models(g, experts, bundle.router.routing)
    system = models.system
    system.set_temperature(BUNDLE_TEMPERATURE)
    system.tau = tau
    x = eval_tensors(images)
    ref = system.predict_step((x, torch.zeros(len(x), dtype=torch.long), torch.arange(len(x))))
    result = bundle.predict(images)
    assert 0.2 < result.edge.offloaded.mean() < 0.8  # both paths are exercised
    np.testing.assert_array_equal(result.edge.offloaded, ref["offloaded"].numpy())
    np.testing.assert_array_equal(result.answered_by, ref["expert"].numpy())
    np.testing.assert_array_equal(result.predictions, ref["prediction"].numpy())
    assert np.max(np.abs(result.edge.logits - torch_logits(models.generalist, x))) < 1e-4
    answer = result.answer
    for j in np.unique(answer.experts):
        rows = answer.experts == j
        torch_ref = torch_logits(models.experts[j], x[torch.from_numpy(answer.indices[rows])])
        assert np.max(np.abs(answer.logits[rows] - torch_ref)) < 1e-4


def test_runtime_decisions_are_the_core_routing_policy(bundle, images, tau):
    result = bundle.predict(images)
    spec = RouterSpec(k=1, confidence="max_prob", temperature=BUNDLE_TEMPERATURE, tau=tau)
    assert bundle.router.routing == spec
    table = class_to_expert(superclass_partition(5))  # built here, not read from the bundle
    _assert_decisions_are_the_core_policy(result.edge, result.edge.logits, spec, table)
    assert 0 < result.edge.offloaded.sum() < len(images)
    np.testing.assert_array_equal(result.answered_by, np.where(result.edge.offloaded, result.edge.experts, -1))


def test_runtime_follows_the_routing_of_router_json(bundle_copy, bundle, images, tau):
    """k, measure and temperature are read from router.json: another spec gives ask_the_expert.method.policies' other
    decisions (a bundle re-tuned by hand records the new routing in its manifest too)."""
    spec = RouterSpec(k=3, confidence="margin", temperature=0.7, tau=0.05)

    def reroute(router):
        router["routing"] = spec.to_dict()

    _rewrite_router(bundle_copy, reroute, record=True)
    edge = EdgeRuntime.load(bundle_copy).run(images)
    logits = bundle.edge.run(images).logits
    np.testing.assert_array_equal(edge.logits, logits)
    _assert_decisions_are_the_core_policy(edge, logits, spec, class_to_expert(superclass_partition(5)))
    default = bundle.edge.run(images)
    assert not np.array_equal(edge.confidences, default.confidences)  # the measure and T did change
    assert not np.array_equal(edge.offloaded, default.offloaded)


def test_dynamic_batch_gives_the_same_answers(bundle, images):
    full = bundle.predict(images)
    for lo, hi in ((0, 1), (3, 10)):
        part = bundle.predict(images[lo:hi])
        np.testing.assert_array_equal(part.predictions, full.predictions[lo:hi])
        np.testing.assert_array_equal(part.answered_by, full.answered_by[lo:hi])
        np.testing.assert_allclose(part.edge.logits, full.edge.logits[lo:hi], atol=1e-5)


def test_verify_command_reports_parity_on_val(bundle_dir, fake_cifar_root, capsys):
    args = ["verify", "--bundle", str(bundle_dir), *_data_args(fake_cifar_root), "--data.batch_size", "32"]
    assert main([*args, "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert "PARITY OK" in out and re.search(r"decision_mismatches +0\n", out)
    assert re.search(r"num_samples +20\n", out)
    largest = float(re.search(r"max_abs_logit_diff_generalist +(\S+)\n", out).group(1))
    assert largest > 0  # ONNX Runtime's kernels are not torch's
    assert main([*args, "--limit", "20", "--atol", str(largest / 2)]) == 1  # a failed parity check
    assert "PARITY FAILED" in capsys.readouterr().out
    assert main([*args, "--limit", "4", "--atol", "-1"]) == 2  # no tolerance is negative: bad input
    assert "--atol must be a number >= 0" in capsys.readouterr().err


def test_verify_accuracy_equals_simulation_and_fails_on_a_loose_tolerance_breach(bundle_dir, val_data):
    report = verify_bundle(bundle_dir, val_data, batch_size=32)
    assert report["passed"] and report["accuracy_bundle"] == report["accuracy_simulated"]
    assert report["num_samples"] == BUNDLE_VAL_SIZE and 0 < report["offload_ratio"] < 1
    assert report["decision_mismatches"] == 0
    few = LabelledImages(val_data.images[:16], val_data.labels[:16], val_data.indices[:16], "val")
    assert not verify_bundle(bundle_dir, few, atol=-1.0)["passed"]  # no tolerance can be met


def test_verify_compares_every_expert_even_when_nothing_is_offloaded(bundle_copy, val_data):
    _rewrite_router(bundle_copy, lambda r: r["routing"].update(tau=0.0), record=True)  # no confidence is below 0
    few = LabelledImages(val_data.images[:16], val_data.labels[:16], val_data.indices[:16], "val")
    report = verify_bundle(bundle_copy, few, batch_size=8)
    assert report["offload_ratio"] == 0.0 and report["experts_checked"] == "4 of 4" and report["passed"]
    assert report["max_abs_logit_diff_experts"] > 0  # expert logits were really compared (float32 vs torch)
    assert not verify_bundle(bundle_copy, few, atol=1e-12, batch_size=8)["passed"]


# ------------------------------------------------------------------------------ edge / near-edge split
@pytest.mark.parametrize("send", ["images", "tensors"])
def test_edge_and_near_edge_halves_equal_the_single_call(bundle_dir, bundle, images, send):
    edge = EdgeRuntime.load(bundle_dir)
    near = NearEdgeRuntime.load(bundle_dir)
    result = edge.run(images, send=send)
    request = OffloadRequest.from_bytes(result.request.to_bytes())  # over the wire
    assert len(request) == int(result.offloaded.sum()) > 0
    sent = near.answer(request)
    answer = ExpertAnswer.from_bytes(sent.to_bytes())  # and back
    for field in ("indices", "experts", "logits", "predictions"):
        np.testing.assert_array_equal(getattr(answer, field), getattr(sent, field))
    split = combine(result, answer)
    single = bundle.predict(images)
    np.testing.assert_array_equal(split.predictions, single.predictions)
    np.testing.assert_array_equal(split.answered_by, single.answered_by)
    np.testing.assert_array_equal(split.confidences, single.confidences)
    with pytest.raises(RequestError, match="does not match"):
        combine(edge.run(images[:5], send=send), near.answer(request))


@pytest.mark.parametrize("message", [OffloadRequest, ExpertAnswer])
def test_unreadable_wire_messages_are_refused_with_a_clear_error(message):
    with pytest.raises(RequestError, match=rf"Cannot read the {message.__name__} .*{message.__name__}.to_bytes"):
        message.from_bytes(b"not an npz archive")


def test_an_expert_answer_missing_an_array_is_refused():
    incomplete = OffloadRequest(np.arange(2), np.zeros(2, dtype=np.int64)).to_bytes()  # no logits, no predictions
    with pytest.raises(RequestError, match=r"KeyError.*logits"):
        ExpertAnswer.from_bytes(incomplete)


def test_edge_machine_needs_only_the_edge_files(bundle_copy, images):
    for j in range(4):
        (bundle_copy / f"expert_{j}.onnx").unlink()
    edge = EdgeRuntime.load(bundle_copy)
    assert edge.run(images).predictions.shape == (len(images),)
    with pytest.raises(BundleError, match=r"expert_0\.onnx is missing"):
        Bundle.load(bundle_copy)


def test_runtime_imports_and_runs_without_torch(bundle_dir, images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys\n"
        "for name in ('torch', 'lightning', 'pytorch_lightning', 'torchvision', 'timm', 'onnx'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np\n"
        "from ask_the_expert.deploy.runtime import Bundle\n"
        "import ask_the_expert.deploy.bundle_format, ask_the_expert.deploy.wire, ask_the_expert.deploy.profile_bundle\n"
        "from ask_the_expert.commands.deploy import main\n"
        f"p = Bundle.load({str(bundle_dir)!r}).predict(np.load({str(tmp_path / 'images.npy')!r}))\n"
        "print(int((p.answered_by >= 0).sum()))\n"
        f"sys.exit(main(['predict', '--bundle', {str(bundle_dir)!r}, '--images', {str(tmp_path / 'images.npy')!r}, "
        f"'--out', {str(tmp_path / 'p.csv')!r}]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == str(int((Bundle.load(bundle_dir).predict(images).answered_by >= 0).sum()))
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "index,prediction,class,confidence,answered_by" and len(rows) == len(images) + 1


def test_predict_command_reads_a_config_and_a_split(bundle_dir, bundle, fake_cifar_root, val_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as printed:
        main(["predict", "--bundle", str(bundle_dir), "--split", "val", *_data_args(fake_cifar_root), "--print_config"])
    assert printed.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["bundle"] == str(bundle_dir) and config["split"] == "val"
    assert config["data"]["val_size"] == BUNDLE_VAL_SIZE and config["data"]["check_integrity"] is False
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "val.csv"
    assert main(["predict", "-c", str(tmp_path / "predict.yaml"), "--limit", "10", "--out", str(out)]) == 0
    expected = bundle.predict(val_data.images[:10])
    accuracy = np.mean(expected.predictions == val_data.labels[:10])
    assert f"accuracy {accuracy:.4f}" in capsys.readouterr().out
    rows = [r.split(",") for r in out.read_text().splitlines()[1:]]
    assert [int(r[1]) for r in rows] == expected.predictions.tolist()
    assert [int(r[4]) for r in rows] == expected.answered_by.tolist()
    assert main(["predict", "--bundle", str(bundle_dir)]) == 2  # neither --images nor --split
    assert "exactly one input" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ tampered bundles
@pytest.mark.parametrize(
    ("name", "message"),
    [("expert_2.onnx", "expert_2.onnx has changed"), ("generalist.onnx", "generalist.onnx has changed"),
     (ROUTER_FILE, "router.json has changed"), (MODEL_CARD_FILE, "MODEL_CARD.md has changed")],
)  # fmt: skip
def test_a_changed_byte_is_refused(bundle_copy, name, message, capsys):
    data = bytearray((bundle_copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle_copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=message):
        Bundle.load(bundle_copy)
    assert main(["predict", "--bundle", str(bundle_copy), "--images", "unused.npy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_missing_files_are_refused(bundle_copy):
    (bundle_copy / "generalist.onnx").unlink()
    with pytest.raises(BundleError, match=r"generalist\.onnx is missing"):
        Bundle.load(bundle_copy, part="edge")
    NearEdgeRuntime.load(bundle_copy)  # the near edge does not need the generalist
    (bundle_copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json .* is missing"):
        Bundle.load(bundle_copy)


def test_router_that_does_not_match_the_expert_files_is_refused(bundle_copy):
    def swap(router):
        router["experts"][0]["subset"], router["experts"][1]["subset"] = (
            router["experts"][1]["subset"],
            router["experts"][0]["subset"],
        )

    _rewrite_router(bundle_copy, swap)
    with pytest.raises(BundleError, match=r"does not match the model files.*expert_0\.onnx was trained for"):
        Bundle.load(bundle_copy)


def test_router_with_unusable_values_is_refused(bundle_copy):
    def break_partition(router):
        router["experts"][0]["subset"] = router["experts"][0]["subset"][1:]
        router["routing"]["k"] = 101

    _rewrite_router(bundle_copy, break_partition)
    with pytest.raises(BundleError, match=r"k=101 is outside 1\.\.100.*not a partition"):  # all problems at once
        Bundle.load(bundle_copy)

    def zero_k(router):
        router["routing"]["k"] = 0

    _rewrite_router(bundle_copy, zero_k)  # RouterSpec itself refuses k=0
    with pytest.raises(BundleError, match=r"not a valid router file \(RoutingError: k must be an integer >= 1"):
        Bundle.load(bundle_copy)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: x.transpose(0, 3, 1, 2), "channels-first"),
        (lambda x: x[0], "single image"),
        (lambda x: x[:, :16], r"shape \(4, 16, 32, 3\)"),
        (lambda x: x.astype(np.float32) / 255, "dtype float32"),
        (lambda x: x.astype(np.int16) * 2, "outside the pixel range"),
        (lambda x: x.tolist(), "numpy array"),
        (lambda x: x[:0], "no image"),
    ],
)
def test_bad_images_are_refused_with_a_clear_error(bundle, images, make, message):
    with pytest.raises(ImageError, match=message):
        bundle.predict(make(images[:4].copy()))


def test_integer_images_within_range_are_accepted(bundle, images):
    np.testing.assert_array_equal(
        bundle.predict(images[:4].astype(np.int64)).predictions, bundle.predict(images[:4]).predictions
    )


def test_export_refuses_an_existing_folder_and_force_replaces_only_bundles(checkpoints, tmp_path, bundle_dir, capsys):
    g, experts = checkpoints
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(g, experts, bundle_dir, routing=RouterSpec(tau=0.5))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a bundle"):
        export_bundle(g, experts, other, routing=RouterSpec(tau=0.5), force=True)
    assert (other / "keep.txt").read_text() == "mine"
    args = [
        "export",
        "--generalist",
        str(g),
        "--experts",
        json.dumps(list(map(str, experts))),
        "--out",
        str(bundle_dir),
    ]
    assert main([*args, "--evaluate_on", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and "Traceback" not in err
    assert main([*args[:-1], str(other), "--evaluate_on", "none", "--routing.tau", "0.5", "--force", "true"]) == 2
    assert "not a bundle" in capsys.readouterr().err and (other / "keep.txt").read_text() == "mine"


def test_export_refuses_checkpoints_that_do_not_partition_the_classes(checkpoints, tmp_path, capsys):
    g, experts = checkpoints
    with pytest.raises(PartitionError):
        export_bundle(g, experts[:3], tmp_path / "b", routing=RouterSpec(tau=0.5))
    with pytest.raises(SuiteError, match="generalist"):
        export_bundle(experts[0], experts, tmp_path / "b", routing=RouterSpec(tau=0.5))
    with pytest.raises(ExportError, match=r"--routing\.tau"):
        export_bundle(g, experts, tmp_path / "b")
    with pytest.raises(RoutingError, match=r"k values must be integers in 1\.\.100.*got \[101\]"):
        export_bundle(g, experts, tmp_path / "b", routing=RouterSpec(k=101, tau=0.5))
    args = ["export", "--generalist", str(g), "--out", str(tmp_path / "b"), "--evaluate_on", "none"]
    partial = json.dumps(list(map(str, experts[1:])))
    assert main([*args, "--experts", partial, "--routing.tau", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "indices [1, 2, 3]" in err and "with none missing" in err
    assert main([*args, "--experts", partial]) == 2  # no tau and no data
    assert "--routing.tau" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / ".b.partial").exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("k", 0, r"k must be an integer >= 1 \(Top-k of the expert choice\), got 0"),
        ("confidence", "certainty", r"Unknown confidence measure\(s\) \['certainty'\]"),
        ("temperature", -1.0, r"temperature must be 'fit' \(temperature scaling on val\) or a number > 0, got -1"),
        ("tau", float("inf"), r"tau must be a finite number \(offload where confidence < tau\), got inf"),
    ],
)
def test_unusable_routing_settings_are_refused_before_any_export(checkpoints, tmp_path, capsys, option, value, message):
    g, experts = checkpoints
    with pytest.raises(RoutingError, match=message):
        RouterSpec(**{option: value})
    args = ["export", "--generalist", str(g), "--experts", json.dumps(list(map(str, experts)))]
    args += ["--out", str(tmp_path / "b"), "--evaluate_on", "none", f"--routing.{option}", str(value)]
    assert main(args) == 2  # a usage error, whether jsonargparse or RouterSpec refuses the value
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    # jsonargparse refuses a non-finite float itself and names the key; RouterSpec names the rule
    assert 'Parser key "routing.tau"' in err if option == "tau" else re.search(message, err)
    assert not (tmp_path / "b").exists()


def test_export_print_config_shows_the_parsed_options(checkpoints, tmp_path, capsys):
    g, experts = checkpoints
    args = ["export", "--generalist", str(g), "--experts", json.dumps(list(map(str, experts))), "--out", "B"]
    with pytest.raises(SystemExit) as printed:
        main([*args, "--routing.k", "2", "--routing.tau", "0.3", "--routing.temperature", "1.5", "--print_config"])
    assert printed.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["routing"] == {"k": 2, "confidence": "max_prob", "temperature": 1.5, "tau": 0.3, "fuse_weight": None}
    assert config["experts"] == list(map(str, experts)) and config["evaluate_on"] == "val"
    assert config["data"]["data_dir"] == "data" and config["force"] is False
    assert not Path("B").exists()
    for command in ("verify", "profile"):
        with pytest.raises(SystemExit) as printed:
            main([command, "--print_config"])
        assert printed.value.code in (0, None) and "bundle:" in capsys.readouterr().out


def test_generalist_only_bundle_answers_everything_locally(checkpoints, images, tmp_path):
    out = tmp_path / "g_only"
    args = ["export", "--generalist", str(checkpoints[0]), "--out", str(out), "--torch_export", "true"]
    assert main([*args, "--evaluate_on", "none", "--profile", str(BUNDLE_PROFILE)]) == 0
    bundle = Bundle.load(out)  # verifies the torch.export program's hash too
    assert "generalist.pt2" in bundle.manifest["files"] and MODEL_CARD_FILE in bundle.manifest["files"]
    assert bundle.manifest["routing"]["temperature_source"] == "default" and bundle.manifest["evaluation"] is None
    assert bundle.router.routing == RouterSpec(temperature=1.0) and bundle.router.num_experts == 0
    card = (out / MODEL_CARD_FILE).read_text(encoding="utf-8")
    assert "tau = n/a (no experts)" in card and "generalist-only bundle" in card and "ASSUMED" in card
    result = bundle.predict(images)
    assert np.all(result.answered_by == -1)
    x = eval_tensors(images)
    g_logits = torch_logits(load_export_models(checkpoints[0], [], RouterSpec()).generalist, x)
    np.testing.assert_array_equal(result.predictions, np.argmax(g_logits, axis=1))
    _assert_decisions_are_the_core_policy(result.edge, result.edge.logits, bundle.router.routing, None)
    program = torch.export.load(str(out / "generalist.pt2")).module()
    np.testing.assert_allclose(program(x[:5]).detach().numpy(), g_logits[:5], atol=1e-5)


# ------------------------------------------------------------------------------------------- profiling
def test_profiler_writes_a_profile_that_load_profile_accepts(bundle_dir, tmp_path):
    base = load_profile(BUNDLE_PROFILE)
    profile = profile_bundle(bundle_dir, base, timing=BundleTiming(batch_size=4, warmup=1, repeats=3))
    path = write_profile(profile, tmp_path / "measured.yaml")
    loaded = load_profile(path)
    timings = loaded.meta["measured_both"]["models"]
    assert set(timings) == {"generalist.onnx", *(f"expert_{j}.onnx" for j in range(4))}
    assert loaded.edge.latency_ms["generalist"] == timings["generalist.onnx"]["batch1_ms"] > 0
    assert loaded.near_edge.latency_ms["expert"] == pytest.approx(
        float(np.median([timings[f"expert_{j}.onnx"]["batch1_ms"] for j in range(4)]))
    )
    assert loaded.edge.power_active_w == base.edge.power_active_w and loaded.link == base.link
    assert "MEASURED" in profile_status(loaded) and "ASSUMED" in profile_status(base)  # what a model card says
    with pytest.raises(SuiteError, match="already exists"):
        write_profile(profile, path)


def test_profile_command_measures_one_section_and_keeps_the_other(bundle_dir, tmp_path, capsys):
    out = tmp_path / "edge.yaml"
    args = [
        "profile",
        "--bundle",
        str(bundle_dir),
        "--base",
        str(BUNDLE_PROFILE),
        "--out",
        str(out),
        "--section",
        "edge",
    ]
    quick = ["--batch_size", "2", "--warmup", "0", "--repeats", "2", "--max_experts", "1"]
    assert main([*args, *quick]) == 0
    measured, base = load_profile(out), load_profile(BUNDLE_PROFILE)
    assert measured.near_edge == base.near_edge
    assert measured.edge.latency_ms["medium"] == measured.meta["measured_edge"]["models"]["expert_0.onnx"]["batch1_ms"]
    assert main([*args, "--batch_size", "2"]) == 2  # exists, no --force
    assert "already exists" in capsys.readouterr().err
    assert main([*args, *quick, "--section", "near_edge", "--force", "true"]) == 0
    replaced = load_profile(out)
    assert replaced.edge == base.edge and "measured_near_edge" in replaced.meta
