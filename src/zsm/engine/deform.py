"""The deformable conv with its offsets and mask made in one native pass, for CPU inference."""

from __future__ import annotations

import torch
from torch import nn

from zsm.models.deform import ModulatedDeformConv2d, bf16_offset_convs_enabled
from zsm.ops.dcn import modulated_deform_conv2d
from zsm.ops.dcn.native_offsets import offsets_and_mask


class NativeOffsetsDeformConv2d(ModulatedDeformConv2d):
    """:class:`~zsm.models.deform.ModulatedDeformConv2d` whose offset/mask conv output
    goes through :func:`zsm.ops.dcn.native_offsets.offsets_and_mask` (sigmoid, and
    flow-guided ``base + max_residual * tanh``, in one pass) instead of torch's
    elementwise ops; the reference's forward where that cannot run. The conv runs in
    the dtype the reference's would (bf16 under CPU bf16 autocast where
    ``BF16_OFFSET_CONVS`` says so, else float32)."""

    def forward(
        self, x: torch.Tensor, feat: torch.Tensor, base: torch.Tensor | None = None
    ) -> torch.Tensor:
        if base is not None and self.max_residual is None:
            raise ValueError("a base flow needs a flow-guided layer (max_residual)")
        got = offsets_and_mask(
            self._offset_mask_output(feat),
            2 * self.offset_mask.out_channels // 3,
            base,
            self.max_residual if base is not None and self.max_residual else 0.0,
        )
        if got is None:
            return super().forward(x, feat, base)
        offset, mask = got
        return modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, padding=self.padding
        )

    def _offset_mask_output(self, feat: torch.Tensor) -> torch.Tensor:
        """The offset/mask conv's whole output, as one conv (see ``offsets_and_mask``)."""
        conv = self.offset_mask
        kind = feat.device.type
        if not torch.is_autocast_enabled(kind):
            return nn.Conv2d.forward(conv, feat)
        bf16 = kind == "cpu" and torch.get_autocast_dtype("cpu") == torch.bfloat16
        if bf16 and bf16_offset_convs_enabled():
            return nn.Conv2d.forward(conv, feat)
        with torch.autocast(kind, enabled=False):
            return nn.Conv2d.forward(conv, feat.float())
