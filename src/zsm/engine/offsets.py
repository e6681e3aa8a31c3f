"""The offset/mask conv as one conv, for channels-last inference and GPUs."""

from __future__ import annotations

import torch

from zsm.models.deform import OffsetMaskConv2d


class FusedOffsetMaskConv2d(OffsetMaskConv2d):
    """:class:`~zsm.models.deform.OffsetMaskConv2d` as one conv, split as views.

    The reference computes offsets and mask logits as two convs, which oneDNN
    runs faster in NCHW (training). With NHWC input one conv is faster (at
    (2, 32, 144, 176), 4 groups: 31.6 ms, against 22.4 + 15.9 ms as two), and
    the deformable conv reads the two views in place; on GPUs one conv is what
    the official release runs. Under autocast the output is made float32
    before it is split (the bf16 conv of ``BF16_OFFSET_CONVS``,
    :mod:`zsm.engine.precision`), so that the two stay views of one tensor.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        n = 2 * self.out_channels // 3
        out = super(OffsetMaskConv2d, self).forward(x)
        if torch.is_autocast_enabled(out.device.type):
            out = out.float()  # one pass over both parts; a no-op for the fp32 islands
        return out[:, :n], out[:, n:]
