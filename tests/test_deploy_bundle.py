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
from deploy_helpers import write_tiny_checkpoints

from core.costs import load_profile
from core.errors import PartitionError, SuiteError
from core.routing import confidence, softmax
from core.subsets import superclass_partition
from core.sweep import sweep_thresholds
from deploy.__main__ import main
from deploy.export import (
    ExportError,
    export_bundle,
    load_eval_data,
    load_models,
    operating_tau,
    torch_inputs,
    torch_logits,
)
from deploy.profile_bundle import profile_bundle, write_profile
from deploy.runtime import (
    MANIFEST_FILE,
    ROUTER_FILE,
    Bundle,
    BundleError,
    EdgeRuntime,
    ImageError,
    NearEdgeRuntime,
    OffloadRequest,
    RequestError,
    combine,
    preprocess,
    sha256_file,
)
from deploy.verify import verify_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILE = REPO_ROOT / "configs" / "profiles" / "edge_arm_wifi.yaml"
TEMPERATURE = 1.5
VAL_SIZE = 100


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared CPU: one thread avoids oversubscription (several times faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def val_data(fake_cifar_root: Path):
    return load_eval_data(fake_cifar_root, "val", check_integrity=False, val_size=VAL_SIZE)


@pytest.fixture(scope="module")
def images(val_data) -> np.ndarray:
    """The fake val images plus uniform noise: uint8 (N, 32, 32, 3)."""
    noise = np.random.default_rng(1).integers(0, 256, size=(28, 32, 32, 3), dtype=np.uint8)
    return np.concatenate([val_data.images, noise])


@pytest.fixture(scope="module")
def tau(checkpoints, images) -> float:
    """A threshold that offloads about half of ``images`` (between two of G's confidences)."""
    g_logits = torch_logits(load_models(checkpoints[0], []).generalist, torch_inputs(images))
    conf = np.sort(confidence(softmax(g_logits, TEMPERATURE), "max_prob"))
    return float((conf[len(conf) // 2 - 1] + conf[len(conf) // 2]) / 2)


@pytest.fixture(scope="module")
def bundle_dir(checkpoints, val_data, tau, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "b1"
    g, experts = checkpoints
    export_bundle(g, experts, out, tau=tau, temperature=TEMPERATURE, data=val_data, batch_size=64)
    return out


@pytest.fixture(scope="module")
def bundle(bundle_dir) -> Bundle:
    return Bundle.load(bundle_dir)


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "copy"))


def _rewrite_router(folder: Path, edit) -> None:
    """Edit router.json and re-hash it in the manifest, as someone hand-assembling a bundle would."""
    router = json.loads((folder / ROUTER_FILE).read_text())
    edit(router)
    (folder / ROUTER_FILE).write_text(json.dumps(router))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][ROUTER_FILE]["sha256"] = sha256_file(folder / ROUTER_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------------------------- export
def test_export_writes_a_complete_self_contained_bundle(bundle_dir, checkpoints, tau):
    g, experts = checkpoints
    files = sorted(p.name for p in bundle_dir.iterdir())
    assert files == sorted(["generalist.onnx", *(f"expert_{j}.onnx" for j in range(4)), ROUTER_FILE, MANIFEST_FILE])
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == set(files) - {MANIFEST_FILE}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(bundle_dir / name)
    assert manifest["sources"]["generalist"]["sha256"] == sha256_file(g)
    assert [e["sha256"] for e in manifest["sources"]["experts"]] == [sha256_file(p) for p in experts]
    assert {"torch", "timm", "onnx"} <= set(manifest["versions"])
    evaluation = manifest["evaluation"]
    assert evaluation["num_samples"] == VAL_SIZE and len(evaluation["experts"]) == 4
    assert evaluation["collaboration"]["tau"] == tau
    router = json.loads((bundle_dir / ROUTER_FILE).read_text())
    assert [e["subset"] for e in router["experts"]] == superclass_partition(5)
    assert router["routing"] == {**router["routing"], "k": 1, "tau": tau, "temperature": TEMPERATURE}
    assert len(router["classes"]["names"]) == 100 and len(router["classes"]["superclass_names"]) == 20


def test_operating_tau_is_the_middle_of_the_chosen_confidence_gap():
    conf = np.array([0.1, 0.2, 0.2, 0.4, 0.9])
    # Offloading the two lowest-confidence samples (conf 0.1, 0.2...) fixes them; the rest are right locally.
    curve = sweep_thresholds(conf, np.array([0, 0, 0, 1, 1], dtype=bool), np.ones(5, dtype=bool))
    assert operating_tau(curve, gap=0.0) == pytest.approx((0.2 + 0.4) / 2)  # offload exactly conf < 0.4
    assert operating_tau(curve, gap=1.0) < 0.1  # offloading nothing is within a gap of 1
    all_fixed = sweep_thresholds(conf, np.zeros(5, dtype=bool), np.ones(5, dtype=bool))
    assert operating_tau(all_fixed, gap=0.0) > 0.9  # offload all


# ------------------------------------------------------------------------------------------- parity
def test_preprocessing_equals_the_training_eval_transform(bundle, images):
    np.testing.assert_array_equal(preprocess(images, bundle.router), torch_inputs(images).numpy())


@torch.inference_mode()
def test_runtime_matches_collaborative_system(bundle, checkpoints, images, tau):
    g, experts = checkpoints
    models = load_models(g, experts)
    system = models.system
    system.set_temperature(TEMPERATURE)
    system.tau = tau
    x = torch_inputs(images)
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


def test_dynamic_batch_gives_the_same_answers(bundle, images):
    full = bundle.predict(images)
    for lo, hi in ((0, 1), (3, 10)):
        part = bundle.predict(images[lo:hi])
        np.testing.assert_array_equal(part.predictions, full.predictions[lo:hi])
        np.testing.assert_array_equal(part.answered_by, full.answered_by[lo:hi])
        np.testing.assert_allclose(part.edge.logits, full.edge.logits[lo:hi], atol=1e-5)


def test_verify_command_reports_parity_on_val(bundle_dir, fake_cifar_root, capsys):
    data_args = ["--data-dir", str(fake_cifar_root), "--no-check-integrity", "--val-size", str(VAL_SIZE)]
    assert main(["verify", str(bundle_dir), *data_args, "--batch-size", "32", "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert "PARITY OK" in out and re.search(r"decision_mismatches +0\n", out)


def test_verify_accuracy_equals_simulation_and_fails_on_a_loose_tolerance_breach(bundle_dir, val_data):
    report = verify_bundle(bundle_dir, val_data, batch_size=32)
    assert report["passed"] and report["accuracy_bundle"] == report["accuracy_simulated"]
    assert report["num_samples"] == VAL_SIZE and 0 < report["offload_ratio"] < 1
    few = type(val_data)(val_data.images[:16], val_data.labels[:16], "val")
    assert not verify_bundle(bundle_dir, few, atol=-1.0)["passed"]  # no tolerance can be met


# ------------------------------------------------------------------------------ edge / near-edge split
@pytest.mark.parametrize("send", ["images", "tensors"])
def test_edge_and_near_edge_halves_equal_the_single_call(bundle_dir, bundle, images, send):
    edge = EdgeRuntime.load(bundle_dir)
    near = NearEdgeRuntime.load(bundle_dir)
    result = edge.run(images, send=send)
    request = OffloadRequest.from_bytes(result.request.to_bytes())  # over the wire
    assert len(request) == int(result.offloaded.sum()) > 0
    split = combine(result, near.answer(request))
    single = bundle.predict(images)
    np.testing.assert_array_equal(split.predictions, single.predictions)
    np.testing.assert_array_equal(split.answered_by, single.answered_by)
    np.testing.assert_array_equal(split.confidences, single.confidences)
    with pytest.raises(RequestError, match="does not match"):
        combine(edge.run(images[:5], send=send), near.answer(request))


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
        "from deploy.runtime import Bundle\n"
        "import deploy.profile_bundle\n"
        "from deploy.__main__ import main\n"
        f"p = Bundle.load({str(bundle_dir)!r}).predict(np.load({str(tmp_path / 'images.npy')!r}))\n"
        "print(int((p.answered_by >= 0).sum()))\n"
        f"sys.exit(main(['predict', {str(bundle_dir)!r}, '--images', {str(tmp_path / 'images.npy')!r}, "
        f"'--out', {str(tmp_path / 'p.csv')!r}]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == str(int((Bundle.load(bundle_dir).predict(images).answered_by >= 0).sum()))
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "index,prediction,class,confidence,answered_by" and len(rows) == len(images) + 1


# ------------------------------------------------------------------------------------ tampered bundles
@pytest.mark.parametrize(
    ("name", "message"),
    [("expert_2.onnx", "expert_2.onnx has changed"), ("generalist.onnx", "generalist.onnx has changed"),
     (ROUTER_FILE, "router.json has changed")],
)  # fmt: skip
def test_a_changed_byte_is_refused(bundle_copy, name, message):
    data = bytearray((bundle_copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle_copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=message):
        Bundle.load(bundle_copy)
    assert main(["predict", str(bundle_copy), "--images", "unused.npy"]) == 2


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
        router["routing"]["k"] = 0

    _rewrite_router(bundle_copy, break_partition)
    with pytest.raises(BundleError, match=r"k=0 is outside.*not a partition"):
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


def test_export_refuses_an_existing_folder_and_force_replaces_only_bundles(checkpoints, tmp_path, bundle_dir):
    g, experts = checkpoints
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(g, experts, bundle_dir, tau=0.5)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a bundle"):
        export_bundle(g, experts, other, tau=0.5, force=True)
    assert (other / "keep.txt").read_text() == "mine"
    assert main(["export", "--generalist", str(g), "--experts", *map(str, experts), "--out", str(bundle_dir)]) == 2


def test_export_refuses_checkpoints_that_do_not_partition_the_classes(checkpoints, tmp_path, capsys):
    g, experts = checkpoints
    with pytest.raises(PartitionError):
        export_bundle(g, experts[:3], tmp_path / "b", tau=0.5)
    with pytest.raises(SuiteError, match="generalist"):
        export_bundle(experts[0], experts, tmp_path / "b", tau=0.5)
    with pytest.raises(ExportError, match="--tau"):
        export_bundle(g, experts, tmp_path / "b")
    with pytest.raises(ExportError, match="k=0"):
        export_bundle(g, experts, tmp_path / "b", tau=0.5, k=0)
    assert main(["export", "--generalist", str(g), "--experts", *map(str, experts[1:]), "--out", str(tmp_path)]) == 2
    assert not (tmp_path / "b").exists()
    assert "error:" in capsys.readouterr().err


def test_generalist_only_bundle_answers_everything_locally(checkpoints, images, tmp_path):
    out = tmp_path / "g_only"
    assert main(["export", "--generalist", str(checkpoints[0]), "--out", str(out), "--torch-export"]) == 0
    bundle = Bundle.load(out)  # verifies the torch.export program's hash too
    assert "generalist.pt2" in bundle.manifest["files"]
    result = bundle.predict(images)
    assert np.all(result.answered_by == -1)
    x = torch_inputs(images)
    g_logits = torch_logits(load_models(checkpoints[0], []).generalist, x)
    np.testing.assert_array_equal(result.predictions, np.argmax(g_logits, axis=1))
    program = torch.export.load(str(out / "generalist.pt2")).module()
    np.testing.assert_allclose(program(x[:5]).detach().numpy(), g_logits[:5], atol=1e-5)


# ------------------------------------------------------------------------------------------- profiling
def test_profiler_writes_a_profile_that_load_profile_accepts(bundle_dir, tmp_path):
    base = load_profile(PROFILE)
    profile = profile_bundle(bundle_dir, base, batch_size=4, warmup=1, repeats=3)
    path = write_profile(profile, tmp_path / "measured.yaml")
    loaded = load_profile(path)
    timings = loaded.meta["measured_both"]["models"]
    assert set(timings) == {"generalist.onnx", *(f"expert_{j}.onnx" for j in range(4))}
    assert loaded.edge.latency_ms["generalist"] == timings["generalist.onnx"]["batch1_ms"] > 0
    assert loaded.near_edge.latency_ms["expert"] == pytest.approx(
        float(np.median([timings[f"expert_{j}.onnx"]["batch1_ms"] for j in range(4)]))
    )
    assert loaded.edge.power_active_w == base.edge.power_active_w and loaded.link == base.link
    with pytest.raises(SuiteError, match="already exists"):
        write_profile(profile, path)


def test_profile_command_measures_one_section_and_keeps_the_other(bundle_dir, tmp_path):
    out = tmp_path / "edge.yaml"
    args = ["profile", str(bundle_dir), "--base", str(PROFILE), "--out", str(out), "--section", "edge"]
    assert main([*args, "--batch-size", "2", "--warmup", "0", "--repeats", "2", "--max-experts", "1"]) == 0
    measured, base = load_profile(out), load_profile(PROFILE)
    assert measured.near_edge == base.near_edge
    assert measured.edge.latency_ms["medium"] == measured.meta["measured_edge"]["models"]["expert_0.onnx"]["batch1_ms"]
    assert main([*args, "--batch-size", "2"]) == 2  # exists, no --force
