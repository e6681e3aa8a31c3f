"""The backend registry and the one entry point, :func:`modulated_deform_conv2d`.

A *backend* does the arithmetic: ``"torchvision"``
(:func:`torchvision.ops.deform_conv2d`, CPU and CUDA) is registered here,
the fast CPU ones (``"cpu"``, ``"cpu-pure"``) by :mod:`zsm.ops.dcn.function`.
``"auto"`` (the default) picks the highest-priority backend that supports
the tensor's device; ``ZSM_DCN_BACKEND`` or :func:`set_backend` forces one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.ops import deform_conv2d as _tv_deform_conv2d

DeformFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, int],
    torch.Tensor,
]


@dataclass(frozen=True)
class Backend:
    """A DCN implementation: ``fn(x, offset, mask, weight, bias, padding)``.

    A backend listing ``gemm_dtypes`` also takes ``gemm_dtype=``: the dtype of
    its GEMMs, while the sampling stays float32 (used under autocast).
    """

    name: str
    fn: DeformFn
    devices: frozenset[str]
    priority: int  # higher wins under "auto"
    gemm_dtypes: frozenset[torch.dtype] = frozenset()


_BACKENDS: dict[str, Backend] = {}
_forced: str | None = None


def register_backend(
    name: str,
    fn: DeformFn,
    *,
    devices: tuple[str, ...],
    priority: int,
    gemm_dtypes: tuple[torch.dtype, ...] = (),
) -> None:
    """Make ``fn`` available as backend ``name`` for the given device types."""
    if name in _BACKENDS:
        raise ValueError(f"deformable-conv backend {name!r} is already registered")
    _BACKENDS[name] = Backend(name, fn, frozenset(devices), priority, frozenset(gemm_dtypes))


def available_backends() -> list[str]:
    """Names of the registered backends, fastest first."""
    return [b.name for b in sorted(_BACKENDS.values(), key=lambda b: -b.priority)]


def set_backend(name: str | None) -> None:
    """Force a backend by name (``None`` or ``"auto"`` restores automatic choice)."""
    global _forced
    if name in (None, "auto"):
        _forced = None
        return
    if name not in _BACKENDS:
        raise ValueError(
            f"unknown deformable-conv backend {name!r}; available: {available_backends()}"
        )
    _forced = name


def select_backend(device: torch.device) -> Backend:
    """The backend used for tensors on ``device`` under the current setting."""
    name = _forced or os.environ.get("ZSM_DCN_BACKEND") or "auto"
    if name != "auto":
        if name not in _BACKENDS:
            raise ValueError(
                f"unknown deformable-conv backend {name!r} (from ZSM_DCN_BACKEND); "
                f"available: {available_backends()}"
            )
        return _BACKENDS[name]
    for backend in sorted(_BACKENDS.values(), key=lambda b: -b.priority):
        if device.type in backend.devices:
            return backend
    return _BACKENDS["torchvision"]


def modulated_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    padding: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """Modulated deformable conv, stride 1, dilation 1.

    Shapes: ``x`` (B, Cin, H, W); ``offset`` (B, 2*G*k*k, H, W); ``mask``
    (B, G*k*k, H, W); ``weight`` (Cout, Cin, k, k); returns (B, Cout, H, W).
    """
    impl = _BACKENDS[backend] if backend else select_backend(x.device)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # Positions (base + offset) are rounded in the input's dtype: fp16
        # resolves 1/16 px at x = 100, bf16 only 1/2 px. So, like the
        # offsets, the sampling stays fp32; its GEMMs take the autocast dtype
        # where the backend can (the CPU backends in bf16: oneDNN's bf16 GEMM
        # is twice as fast where the CPU has native bf16), else fp32 too.
        # Activations in that dtype go in as they are: the CPU backends sample them in
        # float32 themselves (the native kernel reads bf16), with no widened copy.
        dtype = torch.get_autocast_dtype(device_type)
        extra = {"gemm_dtype": dtype} if dtype in impl.gemm_dtypes else {}
        keep = bool(extra) and x.dtype == dtype
        with torch.autocast(device_type, enabled=False):
            return impl.fn(
                x if keep else x.float(),
                offset.float(),
                mask.float(),
                weight.float(),
                bias.float() if bias is not None else None,
                padding,
                **extra,
            )
    return impl.fn(x, offset, mask, weight, bias, padding)


def _torchvision(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
) -> torch.Tensor:
    return _tv_deform_conv2d(x, offset, weight, bias, padding=padding, mask=mask)


register_backend("torchvision", _torchvision, devices=("cpu", "cuda"), priority=0)
