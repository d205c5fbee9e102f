"""The wire format between the edge and the near edge: what the edge sends (an offload request) and what the near
edge answers, serialised as numpy .npz without pickle."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ask_the_expert.utils.errors import SuiteError


class RequestError(SuiteError):
    """An offload request or expert answer is malformed or does not belong to its batch."""


@dataclass(frozen=True)
class OffloadRequest:
    """What the edge sends: batch positions, each one's expert, and raw images or model-ready tensors."""

    indices: np.ndarray
    experts: np.ndarray
    images: np.ndarray | None = None
    tensors: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def to_bytes(self) -> bytes:
        """Serialise (numpy .npz, no pickle) for sending to the near edge."""
        arrays = {"indices": self.indices, "experts": self.experts}
        arrays.update({k: v for k, v in (("images", self.images), ("tensors", self.tensors)) if v is not None})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> OffloadRequest:
        """Inverse of to_bytes."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                return cls(z["indices"], z["experts"], z.get("images"), z.get("tensors"))
        except (OSError, ValueError, KeyError) as exc:
            raise RequestError(
                f"Cannot read the offload request ({type(exc).__name__}: {exc}). Send the bytes of "
                "OffloadRequest.to_bytes() unchanged."
            ) from None


@dataclass(frozen=True)
class ExpertAnswer:
    """The near edge's reply: for each request entry, the expert's logits and its top-1 class."""

    indices: np.ndarray
    experts: np.ndarray
    logits: np.ndarray
    predictions: np.ndarray
