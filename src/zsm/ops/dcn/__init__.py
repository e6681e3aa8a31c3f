"""Modulated deformable convolution (DCNv2) behind one interface.

:func:`modulated_deform_conv2d` is the single entry point; the arithmetic is
done by a *backend* (:mod:`zsm.ops.dcn.backends`):

* ``"torchvision"``: :func:`torchvision.ops.deform_conv2d` (CPU and CUDA);
* ``"cpu"``: sampling + GEMM with a hand-written backward
  (:mod:`zsm.ops.dcn.function`), its sampling in a native C kernel compiled
  on first use (:mod:`zsm.ops.dcn.native`) where a C compiler is present,
  else in PyTorch ops (:mod:`zsm.ops.dcn.pure`); ``"cpu-pure"`` forces the
  latter;
* further backends register themselves with :func:`register_backend`.

``"auto"`` (the default) picks the fastest registered backend that supports
the tensor's device. Set ``ZSM_DCN_BACKEND`` or call :func:`set_backend` to
force one, e.g. to compare them.

Offsets use torchvision's layout: ``(B, 2 * G * k * k, H, W)`` holding, for
each offset group G and kernel point, a (dy, dx) pair; the mask is
``(B, G * k * k, H, W)`` in [0, 1].
"""

from zsm.ops.dcn.backends import (
    Backend,
    DeformFn,
    available_backends,
    modulated_deform_conv2d,
    register_backend,
    select_backend,
    set_backend,
)
from zsm.ops.dcn.function import deform_conv2d_cpu  # registers "cpu" and "cpu-pure"
from zsm.ops.dcn.native import native_available

__all__ = [
    "Backend",
    "DeformFn",
    "available_backends",
    "deform_conv2d_cpu",
    "modulated_deform_conv2d",
    "native_available",
    "register_backend",
    "select_backend",
    "set_backend",
]
