"""A Triton model repository of a bundle's experts, for production serving without this suite (torch-free: onnx).

For each expert ``<folder>/expert_<j>/``: ``1/model.onnx`` (the bundle's expert with the input normalisation of
router.json prepended as ONNX operators, so that it takes the same raw pixels as ``ate-deploy serve``: ``images`` UINT8
(batch, H, W, 3) -> ``logits`` FP32 (batch, num_classes)) and ``config.pbtxt`` (the onnxruntime backend, the inputs
and outputs, the largest batch, dynamic batching and one instance on the GPU when there is one). The edge client
talks to it exactly as to ``ate-deploy serve`` (it does without ``server_ms``, which Triton's own metrics replace).

    tritonserver --model-repository=<bundle>/triton
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from ask_the_expert.deploy.bundle_format import RouterConfig
from ask_the_expert.deploy.serve_contract import IMAGES, LOGITS, expert_model_name

TRITON_FOLDER = "triton"
_NORMALISED = "normalised_images"


def preprocessing_graph(router: RouterConfig, like: onnx.ModelProto) -> onnx.ModelProto:
    """uint8 NHWC pixels -> normalised float32 NCHW, the float32 operations of ask_the_expert.deploy.runtime.preprocess,
    as an ONNX model with ``like``'s IR version and opsets (so that it composes with it)."""
    size = router.image_size
    constants = {
        "scale": np.asarray(np.float32(1.0 / 255.0)),
        "mean": np.asarray(router.mean, dtype=np.float32),
        "std": np.asarray(router.std, dtype=np.float32),
    }
    nodes = [
        helper.make_node("Cast", [IMAGES], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["standardised"]),
        helper.make_node("Transpose", ["standardised"], [_NORMALISED], perm=[0, 3, 1, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "normalise",
        [helper.make_tensor_value_info(IMAGES, TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info(_NORMALISED, TensorProto.FLOAT, ["batch", 3, size, size])],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    return helper.make_model(graph, opset_imports=list(like.opset_import), ir_version=like.ir_version)


def with_preprocessing(expert: onnx.ModelProto, router: RouterConfig) -> onnx.ModelProto:
    """The expert model taking raw uint8 pixels (its metadata kept)."""
    merged = compose.merge_models(
        preprocessing_graph(router, expert), expert, io_map=[(_NORMALISED, IMAGES)], prefix2="expert/"
    )
    # The merged graph's input is ``images`` (from the first model); its output got the prefix: name it back.
    old = f"expert/{LOGITS}"
    for node in merged.graph.node:
        node.output[:] = [LOGITS if o == old else o for o in node.output]
    merged.graph.output[0].name = LOGITS
    helper.set_model_props(merged, {p.key: p.value for p in expert.metadata_props})
    onnx.checker.check_model(merged)
    return merged


def model_config(name: str, router: RouterConfig, max_batch_size: int, max_queue_delay_us: int) -> str:
    """config.pbtxt of one expert for Triton's onnxruntime backend."""
    size = router.image_size
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{IMAGES}"
    data_type: TYPE_UINT8
    dims: [ {size}, {size}, 3 ]
  }}
]
output [
  {{
    name: "{LOGITS}"
    data_type: TYPE_FP32
    dims: [ {router.num_classes} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [
  {{
    count: 1
    kind: KIND_AUTO
  }}
]
"""


def write_triton_repository(
    bundle_folder: Path, router: RouterConfig, out: Path, max_batch_size: int = 64, max_queue_delay_us: int = 500
) -> Sequence[Path]:
    """Write the model repository of the experts in ``bundle_folder`` to ``out``; returns the files written."""
    written = []
    for j, file in enumerate(router.expert_files):
        name = expert_model_name(j)
        version = out / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        onnx.save(with_preprocessing(onnx.load(bundle_folder / file), router), version / "model.onnx")
        config = out / name / "config.pbtxt"
        config.write_text(model_config(name, router, max_batch_size, max_queue_delay_us), encoding="utf-8")
        written += [version / "model.onnx", config]
    return written
