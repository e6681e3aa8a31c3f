"""Precision names: what ``auto`` picks on CPUs with and without native bf16, and on GPUs."""

from __future__ import annotations

import pytest
import torch

from zsm.engine import precision as P

CPU = torch.device("cpu")
NATIVE = {"avx512_bf16": True, "amx_bf16": True, "avx512f": False, "": False}


def test_auto_bf16_on_the_cpu_is_the_measured_decision() -> None:
    """bf16 held the public clips' scores (within 0.05 dB) and was faster end to end on
    the development CPU (AVX512-BF16 and AMX): README, "Precision"."""
    assert P.AUTO_BF16_ON_CPU is True


@pytest.mark.parametrize("flag", list(NATIVE))
def test_auto_picks_bf16_only_on_a_cpu_with_native_bf16(
    flag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({flag, "sse2"}))
    native = NATIVE[flag]
    assert P.cpu_has_native_bf16() is native
    assert P.resolve_precision(CPU, "auto") == ("bf16" if native else "fp32")
    assert P.autocast_dtype(CPU, "auto") == (torch.bfloat16 if native else None)
    monkeypatch.setattr(P, "AUTO_BF16_ON_CPU", False)
    assert P.resolve_precision(CPU, "auto") == "fp32"


def test_explicit_precisions_are_kept_and_gpus_get_fp32_from_auto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    for name in ("fp32", "fp16", "bf16"):
        assert P.resolve_precision(CPU, name) == name
    assert P.autocast_dtype(CPU, "fp16") is None  # fp16 is for GPUs: float32 on a CPU
    assert P.resolve_precision(torch.device("cuda"), "auto") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve_precision(CPU, "int8")
