"""MLServer runtime of one bundle expert (``implementation: mlserver_expert.ExpertModel`` in model-settings.json;
``parameters.uri`` is the bundle folder). Adaptive batching comes from model-settings' max_batch_size/time."""

from __future__ import annotations

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from ask_the_expert.deploy.runtime import Bundle, preprocess
from ask_the_expert.deploy.serve_contract import IMAGES, LOGITS


class ExpertModel(MLModel):
    async def load(self) -> bool:
        self.bundle = Bundle.load(self.settings.parameters.uri, "near_edge")
        self.session = self.bundle.near_edge.sessions[0]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0])
        logits = self.session.run([LOGITS], {IMAGES: preprocess(images, self.bundle.router)})[0]
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(LOGITS, logits)])
