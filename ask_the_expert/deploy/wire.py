"""The wire format between the edge and the near edge: what the edge sends (an offload request) and what the near
edge answers (an expert answer), both serialised as numpy .npz without pickle, in both directions.

``ate-deploy serve`` / ``ate-deploy client`` speak the Open Inference Protocol instead
(ask_the_expert.deploy.serve_contract); these messages are for a transport of the user's own (a queue, a socket)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from ask_the_expert.utils.errors import SuiteError


class RequestError(SuiteError):
    """An offload request or expert answer is malformed or does not belong to its batch."""


def _to_npz(arrays: dict[str, np.ndarray | None]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
    return buf.getvalue()


def _from_npz(data: bytes, required: tuple[str, ...], optional: tuple[str, ...], kind: str) -> list[Any]:
    """The named arrays of ``data`` (optional ones None when absent) of a ``kind`` message; RequestError when
    unreadable."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return [z[k] for k in required] + [z.get(k) for k in optional]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise RequestError(
            f"Cannot read the {kind} ({type(exc).__name__}: {exc}). Send the bytes of {kind}.to_bytes() unchanged."
        ) from None


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
        return _to_npz(
            {"indices": self.indices, "experts": self.experts, "images": self.images, "tensors": self.tensors}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> OffloadRequest:
        """Inverse of to_bytes."""
        return cls(*_from_npz(data, ("indices", "experts"), ("images", "tensors"), "OffloadRequest"))


@dataclass(frozen=True)
class ExpertAnswer:
    """The near edge's reply: for each request entry, the expert's logits and its top-1 class."""

    indices: np.ndarray
    experts: np.ndarray
    logits: np.ndarray
    predictions: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def to_bytes(self) -> bytes:
        """Serialise (numpy .npz, no pickle) for sending back to the edge."""
        fields = ("indices", "experts", "logits", "predictions")
        return _to_npz({k: getattr(self, k) for k in fields})

    @classmethod
    def from_bytes(cls, data: bytes) -> ExpertAnswer:
        """Inverse of to_bytes."""
        return cls(*_from_npz(data, ("indices", "experts", "logits", "predictions"), (), "ExpertAnswer"))
