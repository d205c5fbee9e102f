"""The two halves deployed for real, on 127.0.0.1: `ate-deploy serve` (Triton via PyTriton, Open Inference Protocol)
and the edge client, with parity, error statuses, a stalled and a killed server, and the measured cost profile.

One server (dynamic batching, at most 8 images a request) serves the shared tiny bundle for the whole module; the
test that kills it runs last. Every wait is bounded (timeouts of a fraction of a second, at most a few requests)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import BUNDLE_PROFILE, REPO_ROOT
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from ask_the_expert.commands.deploy import main
from ask_the_expert.deploy.bundle_format import BundleError
from ask_the_expert.deploy.client import ClientOptions, EdgeClient, RequestFailed, V2Connection, measured_profile
from ask_the_expert.deploy.profile_bundle import write_profile
from ask_the_expert.deploy.runtime import Bundle, preprocess
from ask_the_expert.deploy.serve_process import ServerProcess
from ask_the_expert.deploy.triton_repo import TRITON_FOLDER
from ask_the_expert.method.costs import load_profile, sample_costs, transfer_ms

MAX_BATCH = 8


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process = ServerProcess(bundle_dir, ["--max_batch_size", str(MAX_BATCH)], log=log, start_timeout_s=120)
    with process:
        yield process


@pytest.fixture(scope="module")
def reference(bundle_dir: Path, images: np.ndarray):
    """What `deploy predict` answers in-process."""
    return Bundle.load(bundle_dir).predict(images)


def _client(bundle_dir: Path, server: ServerProcess, protocol: str = "grpc", **options) -> EdgeClient:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return EdgeClient(bundle_dir, ClientOptions(url=url, protocol=protocol, **options))


def _classify(client: EdgeClient, images: np.ndarray, batch_size: int):
    parts = [client.classify(images[s : s + batch_size]) for s in range(0, len(images), batch_size)]
    return np.concatenate([p.predictions for p in parts]), np.concatenate([p.answered_by for p in parts])


# -------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize(("protocol", "batch_size"), [("grpc", 4), ("http", 16)])
def test_client_answers_exactly_as_predict_in_process(bundle_dir, server, images, reference, protocol, batch_size):
    client = _client(bundle_dir, server, protocol)
    predictions, answered_by = _classify(client, images, batch_size)
    np.testing.assert_array_equal(predictions, reference.predictions)
    np.testing.assert_array_equal(answered_by, reference.answered_by)
    offloaded = int(np.sum(reference.answered_by >= 0))
    stats = client.stats.summary()
    assert stats["offloaded"] == stats["answered_by_expert"] == offloaded > 0
    assert sum(stats["fallbacks"].values()) == 0
    assert sum(r.images for r in client.requests) == offloaded  # only the offloaded images were sent
    assert all(r.outcome == "expert" and 0 <= r.server_ms <= r.round_trip_ms for r in client.requests)
    assert all(r.bytes_up == r.images * 32 * 32 * 3 for r in client.requests)


def test_measured_profile_reproduces_the_measured_latencies(bundle_dir, server, images, tmp_path):
    client = _client(bundle_dir, server)
    _classify(client, images[:40], 1)
    base = load_profile(BUNDLE_PROFILE)
    profile = measured_profile(client.batches, client.requests, base)
    path = write_profile(profile, tmp_path / "measured.yaml")
    loaded = load_profile(path)  # what evaluate.py --profiles does
    answered = [r for r in client.requests if r.outcome == "expert"]
    assert loaded.edge.latency_ms["generalist"] == pytest.approx(np.median([b.edge_ms for b in client.batches]), 1e-3)
    assert loaded.near_edge.latency_ms["expert"] == pytest.approx(np.median([r.server_ms for r in answered]), 1e-3)
    assert loaded.link.bytes_up == 3072 and loaded.link.bytes_down == 404  # 100 float32 logits + server_ms
    t_up = transfer_ms(3072, base.link.uplink_mbps)
    t_down = transfer_ms(404, base.link.downlink_mbps)
    link = np.median([r.transfer_queue_ms for r in answered])
    assert loaded.link.rtt_ms == pytest.approx(max(0.0, link - t_up - t_down), abs=1e-3)
    offloaded = sample_costs(loaded, np.array([False, True]))["latency_ms"]  # the cost model's extra for offloading
    extra = loaded.link.rtt_ms + t_up + t_down + loaded.near_edge.latency_ms["expert"]
    assert offloaded[1] - offloaded[0] == pytest.approx(extra, abs=1e-6)
    assert loaded.edge.power_active_w == base.edge.power_active_w and "measured_client" in loaded.meta


# -------------------------------------------------------------------------------- server endpoints
def test_health_metadata_and_batching_are_served(server, bundle_dir):
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    assert http.is_server_live() and http.is_server_ready() and grpc.is_server_ready()
    assert all(http.is_model_ready(f"expert_{j}") for j in range(4))
    meta = http.get_model_metadata("expert_0")
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "server_ms"]
    config = http.get_model_config("expert_0")
    assert config["max_batch_size"] == MAX_BATCH and "dynamic_batching" in config
    with urllib.request.urlopen(f"http://{server.host}:{server.metrics_port}/metrics", timeout=5) as page:
        assert b"nv_inference_request_success" in page.read()


def _infer_http(server: ServerProcess, array: np.ndarray, datatype: str):
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=5)
    request = httpclient.InferInput("images", list(array.shape), datatype)
    request.set_data_from_numpy(array, binary_data=True)
    return client.infer("expert_0", [request])


@pytest.mark.parametrize(
    ("array", "datatype", "message"),
    [
        (np.zeros((1, 32, 32, 3), np.float32), "FP32", "data-type"),  # normalised tensors instead of pixels
        (np.zeros((2, 32, 32), np.uint8), "UINT8", "shape"),  # no channel axis
        (np.zeros((MAX_BATCH + 1, 32, 32, 3), np.uint8), "UINT8", f"batch-size must be <= {MAX_BATCH}"),  # too big
    ],
    ids=["float-tensors", "wrong-shape", "oversized-batch"],
)
def test_malformed_and_oversized_requests_get_a_clear_error_and_the_server_stays_up(
    server, bundle_dir, images, reference, array, datatype, message
):
    with pytest.raises(InferenceServerException, match=message) as http_error:
        _infer_http(server, array, datatype)
    assert http_error.value.status() == "400"
    request = grpcclient.InferInput("images", list(array.shape), datatype)
    request.set_data_from_numpy(array)
    with pytest.raises(InferenceServerException, match=message) as grpc_error:
        grpcclient.InferenceServerClient(server.grpc_url).infer("expert_0", [request], client_timeout=5)
    assert grpc_error.value.status() == "StatusCode.INVALID_ARGUMENT"
    body = b'{"inputs": [{"name": "images", "shape": [1], "datatype": "UINT8"'  # cut-off JSON
    post = urllib.request.Request(f"http://{server.http_url}/v2/models/expert_0/infer", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(post, timeout=5)
    # Triton 2.51 answers a body it cannot parse with 500 and the parser's message (400 would be as good).
    assert raw.value.code in (400, 500) and b"failed to parse the request JSON" in raw.value.read()
    # ... and it still answers the others
    predictions, answered_by = _classify(_client(bundle_dir, server), images[:16], 16)
    np.testing.assert_array_equal(predictions, reference.predictions[:16])
    np.testing.assert_array_equal(answered_by, reference.answered_by[:16])


# ----------------------------------------------------------------------------------------- faults
def test_garbage_answers_fall_back_to_the_generalist(bundle_dir, server, images, reference, monkeypatch):
    client = _client(bundle_dir, server, retries=2)
    calls = []

    def nan_logits(expert, batch):
        calls.append(expert)
        logits = np.full((len(batch), 100), np.nan, dtype=np.float32)
        return client.connection._checked(logits, None, len(batch))

    monkeypatch.setattr(client.connection, "infer", nan_logits)
    prediction = client.classify(images)
    offloaded = reference.answered_by >= 0
    np.testing.assert_array_equal(prediction.predictions, prediction.edge.predictions)  # G's answers
    assert client.stats.fallbacks["garbage"] == int(offloaded.sum()) and np.all(prediction.answered_by == -1)
    assert len(calls) == len(np.unique(reference.answered_by[offloaded]))  # garbage is not retried
    assert "NaN" in client.stats.last_error["garbage"]


@pytest.mark.parametrize(
    ("logits", "server_ms", "message"),
    [
        (np.zeros((2, 100), np.float64), None, "float32"),
        (np.zeros((3, 100), np.float32), None, r"\(2, 100\)"),
        (np.zeros((2, 100), np.float32), np.full((2, 1), -1.0, np.float32), "server_ms"),
        ("not an array", None, "str"),
    ],
)
def test_malformed_answers_are_recognised_as_garbage(logits, server_ms, message):
    connection = V2Connection(ClientOptions(), num_classes=100)
    with pytest.raises(RequestFailed, match=message) as failed:
        connection._checked(logits, server_ms, 2)
    assert failed.value.reason == "garbage"


def test_a_stalled_server_times_out_falls_back_and_recovers(bundle_dir, server, images, reference):
    client = _client(bundle_dir, server, timeout_s=0.3, retries=1, retry_backoff_ms=10)
    offloaded = np.flatnonzero(reference.answered_by >= 0)[:3]
    # The process that runs the experts freezes (a stalled model): Triton still takes requests, nothing answers.
    server.process.send_signal(signal.SIGSTOP)
    try:
        start = time.perf_counter()
        prediction = client.classify(images[offloaded])
        elapsed = time.perf_counter() - start
    finally:
        server.process.send_signal(signal.SIGCONT)
    requests = len(np.unique(reference.answered_by[offloaded]))
    assert client.stats.fallbacks["timeout"] == len(offloaded) and np.all(prediction.answered_by == -1)
    assert all(r.attempts == 2 for r in client.requests)  # one retry each, then the fallback
    assert elapsed < requests * 2 * (0.3 + 0.5) + 1  # bounded by the timeouts, not by the stall
    np.testing.assert_array_equal(prediction.predictions, prediction.edge.predictions)
    answered = client.classify(images[offloaded])  # the same client, once the server runs again
    np.testing.assert_array_equal(answered.predictions, reference.predictions[offloaded])
    assert client.stats.answered_by_expert == len(offloaded)


def test_client_command_writes_what_predict_writes_and_a_measured_profile(bundle_dir, server, images, tmp_path, capsys):
    np.save(tmp_path / "images.npy", images[:48])
    common = ["--bundle", str(bundle_dir), "--images", str(tmp_path / "images.npy")]
    assert main(["predict", *common, "--out", str(tmp_path / "predict.csv")]) == 0
    profile = tmp_path / "measured.yaml"
    args = ["client", *common, "--url", server.grpc_url, "--out", str(tmp_path / "client.csv")]
    args += ["--profile_out", str(profile), "--base", str(BUNDLE_PROFILE)]
    capsys.readouterr()
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.split("\nWrote")[0])
    assert summary["images"] == 48 and summary["answered_by_expert"] == summary["offloaded"] > 0
    assert (tmp_path / "client.csv").read_text() == (tmp_path / "predict.csv").read_text()
    assert load_profile(profile).meta["measured_client"]["url"] == server.grpc_url
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # never overwritten without --force


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--http_port", "0"], "--http_port 0 is not a port"),
        (["serve", "--grpc_port", "8000"], "the ports must differ"),
        (["serve", "--max_batch_size", "0"], "--max_batch_size 0 must be >= 1"),
        (["client", "--images", "x.npy", "--timeout_s", "0"], "--timeout_s 0.0 must be > 0"),
        (["client", "--images", "x.npy", "--profile_out", "p.yaml"], "--profile_out and --base go together"),
        (["client", "--url", "http://host:8001", "--images", "x.npy"], "must be host:port"),
    ],
)
def test_bad_serving_options_are_refused_before_any_work(bundle_dir, capsys, args, message):
    assert main([args[0], "--bundle", str(bundle_dir), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_a_changed_expert_file_is_refused_at_server_start(bundle_dir, tmp_path, capsys):
    import shutil

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "copy"))
    with (copy / "expert_2.onnx").open("ab") as f:
        f.write(b"\0")
    assert main(["serve", "--bundle", str(copy)]) == 2
    assert "expert_2.onnx has changed since export" in capsys.readouterr().err


def test_server_and_client_modules_run_without_torch():
    script = (
        "import sys\n"
        "for name in ('torch', 'lightning', 'torchvision', 'timm'):\n"
        "    sys.modules[name] = None\n"
        "import ask_the_expert.deploy.serve, ask_the_expert.deploy.client, ask_the_expert.deploy.serve_process\n"
        "import ask_the_expert.deploy.triton_repo\n"
        "import pytriton.triton, tritonclient.grpc, tritonclient.http\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


# ------------------------------------------------------------------------------ Triton repository
def test_triton_repository_declares_the_contract_and_answers_as_the_bundle(bundle_dir, images):
    bundle = Bundle.load(bundle_dir)  # part "all": the repository's files are hashed in the manifest too
    x = preprocess(images, bundle.router)
    for j, session in enumerate(bundle.near_edge.sessions):
        folder = bundle_dir / TRITON_FOLDER / f"expert_{j}"
        config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert (config.name, config.platform, config.max_batch_size) == (f"expert_{j}", "onnxruntime_onnx", 64)
        assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("images", 2, [32, 32, 3])]  # UINT8
        assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("logits", 11, [100])]  # FP32
        assert config.HasField("dynamic_batching")
        model = ort.InferenceSession(str(folder / "1" / "model.onnx"))
        assert [(i.name, i.type) for i in model.get_inputs()] == [("images", "tensor(uint8)")]
        logits = model.run(["logits"], {"images": images})[0]  # raw pixels in: normalisation is inside
        np.testing.assert_allclose(logits, session.run(["logits"], {"images": x})[0], rtol=0, atol=1e-5)
        assert model.get_modelmeta().custom_metadata_map["expert_index"] == str(j)


def test_a_changed_triton_config_is_refused(bundle_dir, tmp_path):
    import shutil

    copy = Path(shutil.copytree(bundle_dir, tmp_path / "copy"))
    (copy / TRITON_FOLDER / "expert_1" / "config.pbtxt").write_text("max_batch_size: 100000\n")
    with pytest.raises(BundleError, match=r"triton/expert_1/config\.pbtxt has changed"):
        Bundle.load(copy)


# ------------------------------------------------------------------------ last: the server is killed
def test_a_server_killed_mid_run_leaves_every_image_answered(bundle_dir, server, images, reference):
    client = _client(bundle_dir, server, timeout_s=0.5, retries=1, retry_backoff_ms=10)
    first, second = images[:64], images[64:]
    predictions, answered_by = _classify(client, first, 8)
    np.testing.assert_array_equal(predictions, reference.predictions[:64])
    server.kill()
    predictions, answered_by = _classify(client, second, 8)
    offloaded = reference.answered_by[64:] >= 0
    edge = Bundle.load(bundle_dir, "edge").edge.run(second)
    np.testing.assert_array_equal(predictions, edge.predictions)  # every image answered, by G
    assert np.all(answered_by == -1) and client.stats.fallbacks["down"] == int(offloaded.sum()) > 0
    assert client.stats.images == len(images) and math.isnan(client.requests[-1].server_ms)
    assert "onnect" in client.stats.last_error["down"]  # connection refused / failed to connect
