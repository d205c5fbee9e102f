"""KServe Python model server of one bundle expert:

python benchmarks/serving_engines/kserve_expert.py BUNDLE HTTP_PORT GRPC_PORT
"""

from __future__ import annotations

import sys
import uuid

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from ask_the_expert.deploy.runtime import Bundle, preprocess
from ask_the_expert.deploy.serve_contract import IMAGES, LOGITS, expert_model_name


class ExpertModel(Model):
    def __init__(self, bundle: str) -> None:
        super().__init__(expert_model_name(0))
        self.bundle = Bundle.load(bundle, "near_edge")
        self.session = self.bundle.near_edge.sessions[0]
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        images = payload.inputs[0].as_numpy()
        logits = self.session.run([LOGITS], {IMAGES: preprocess(images, self.bundle.router)})[0]
        output = InferOutput(name=LOGITS, shape=list(logits.shape), datatype="FP32", data=logits)
        response_id = payload.id or str(uuid.uuid4())  # tritonclient sends no id; KServe's response needs one
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=response_id)


if __name__ == "__main__":
    bundle, http_port, grpc_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ModelServer(http_port=http_port, grpc_port=grpc_port).start([ExpertModel(bundle)])
