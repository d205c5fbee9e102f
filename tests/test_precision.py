"""bf16 on CPUs: kept where the CPU has native bf16 (or on a GPU), fp32 elsewhere, said once."""

from __future__ import annotations

import pytest

from lightning_modules import precision
from lightning_modules.precision import KEEP_EMULATED_BF16, resolve_precision


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch):
    def set_native(value: bool) -> None:
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: value)

    return set_native


@pytest.mark.parametrize("requested", ["bf16-mixed", "bf16-true", "bf16"])
def test_bf16_on_a_cpu_without_native_bf16_trains_in_fp32(native_bf16, monkeypatch, requested):
    native_bf16(False)
    monkeypatch.delenv(KEEP_EMULATED_BF16, raising=False)
    assert resolve_precision(requested, "cpu") == "32-true"


def test_bf16_is_kept_where_it_is_native_or_asked_to_be_kept(native_bf16, monkeypatch):
    native_bf16(True)
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    native_bf16(False)
    monkeypatch.setenv(KEEP_EMULATED_BF16, "1")
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_other_precisions_and_accelerators_are_untouched(native_bf16, monkeypatch):
    native_bf16(False)
    monkeypatch.delenv(KEEP_EMULATED_BF16, raising=False)
    assert resolve_precision("32-true", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"
    assert resolve_precision("bf16-mixed", "gpu") == "bf16-mixed"
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    assert resolve_precision("bf16-mixed", "auto") == "bf16-mixed"
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision.torch.backends.mps, "is_available", lambda: False)
    assert resolve_precision("bf16-mixed", "auto") == "32-true"
