"""The HR tail in bands of rows, one frame at a time: CPU inference without page faults.

:class:`BandedReconstructor` computes what
:class:`~zsm.models.reconstruct.Reconstructor` computes (same parameters, same
result up to the float rounding of the conv kernels), but runs the trunk one
frame at a time and everything after ``up1`` (whose tensors are 16x the
input's) one band of rows at a time, each band's largest tensor at most
:data:`BAND_BYTES`. The tail's peak memory drops from N whole HR tensors to
one band, and no tensor is large enough for the allocator to map fresh pages
for it. Bands read one extra row each side from their neighbours, so seams
cannot appear.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from zsm.engine.fused import conv_act
from zsm.models.reconstruct import Reconstructor

# Largest tensor of the HR tail in one band, in bytes. Under glibc's largest dynamic mmap
# threshold (32 MB), so freed bands are reused from the heap instead of being unmapped and
# page-faulted in again.
BAND_BYTES = 16 << 20


class BandedReconstructor(Reconstructor):
    """:class:`~zsm.models.reconstruct.Reconstructor` frame by frame, its tail in bands."""

    band_bytes = BAND_BYTES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        # Frame by frame (the trunk's tensors stay a few MB, reused from the heap: 113 vs
        # 107 GFLOP/s for 1 vs 5 frames at 176x144 even without page faults), then bands.
        n, _, h, w = x.shape
        out = x.new_empty(n, 3, 4 * h, 4 * w)
        for i in range(n):
            # LeakyReLU commutes with the shuffle (it only moves values): fused into up1
            y = F.pixel_shuffle(conv_act(self.up1, self.trunk(x[i : i + 1]), "lrelu"), 2)
            rows = self._band_rows(y)
            for r0 in range(0, 2 * h, rows):
                r1 = min(r0 + rows, 2 * h)
                out[i : i + 1, :, 2 * r0 : 2 * r1] = self._band(y, r0, r1)
        return out

    def _band_rows(self, x: torch.Tensor) -> int:
        """Rows of ``x`` (the x2 level) per band: ``up2``'s output row is the largest."""
        row_bytes = self.up2.out_channels * 2 * x.shape[-1] * x.element_size()
        return max(8, self.band_bytes // row_bytes)

    def _band(self, x: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """HR rows ``[2 r0, 2 r1)`` of the tail, from rows ``[r0 - 2, r1 + 2)`` of ``x``.

        Each conv gets its input rows with one row of halo each side: a
        neighbour's row inside the image, a zero row at its border (the
        convs' own zero padding), and drops them (row padding 0).
        """
        h = x.shape[-2]
        s0, s1 = max(r0 - 1, 0), min(r1 + 1, h)  # x2 rows of up2's output (hr_conv's halo)
        y = _conv_rows(self.up2, x[..., max(s0 - 1, 0) : s1 + 1, :], s0 == 0, s1 == h, "lrelu")
        y = F.pixel_shuffle(y, 2)  # HR rows [2 s0, 2 s1)
        y = _conv_rows(self.hr_conv, y, s0 == 0, s1 == h, "lrelu")  # [2 r0 - 1, 2 r1 + 1)
        return _few_outputs_conv_rows(self.out_conv, y, r0 == 0, r1 == h)  # [2 r0, 2 r1)


def _pad_rows(x: torch.Tensor, top: bool, bottom: bool) -> torch.Tensor:
    """A zero row above and/or below ``x``: the conv's padding at the image border."""
    return F.pad(x, (0, 0, int(top), int(bottom))) if top or bottom else x


def _conv_rows(
    conv: nn.Conv2d, x: torch.Tensor, top: bool, bottom: bool, act: str | None = None
) -> torch.Tensor:
    """``conv`` over rows whose first and last are halo (dropped) unless at the image border.

    At a border the conv's zero padding applies instead; columns are padded as usual.
    ``act``: the activation after it, fused in (:func:`zsm.engine.fused.conv_act`).
    """
    x = _pad_rows(x, top, bottom)
    if act is not None:
        return conv_act(conv, x, act, padding=(0, 1))
    return F.conv2d(x, conv.weight, conv.bias, padding=(0, 1))


def _few_outputs_conv_rows(
    conv: nn.Conv2d, x: torch.Tensor, top: bool, bottom: bool
) -> torch.Tensor:
    """:func:`_conv_rows` for a conv with few outputs (the RGB one), one image, as taps.

    oneDNN takes as long for 3 outputs as for 16 (the input's reads dominate):
    6.1 ms for a (1, 32, 96, 704) band. Instead one GEMM gives every kernel
    tap's contribution at every pixel, ``z[i, j] = W[:, :, i, j] @ x`` (3 x 9
    rows, channel-major), and the output sums the nine shifted planes: 2.5 ms.
    """
    x = _pad_rows(x, top, bottom)
    _, cin, h, w = x.shape
    cout, _, kh, kw = conv.weight.shape
    rows = h - kh + 1
    taps = conv.weight.permute(2, 3, 0, 1).reshape(kh * kw * cout, cin)
    pixels = x.permute(0, 2, 3, 1).reshape(h * w, cin)  # a view of channels-last x
    z = torch.mm(taps, pixels.t()).view(kh, kw, cout, h, w)
    pad = kw // 2
    out = z[0, pad, :, :rows].clone()
    if conv.bias is not None:
        out += conv.bias.view(cout, 1, 1)
    for i in range(kh):
        for j in range(kw):
            if i == 0 and j == pad:
                continue
            d = j - pad  # column shift; columns outside the image are the zero padding
            src = z[i, j, :, i : i + rows]
            if d < 0:
                out[:, :, -d:] += src[:, :, : w + d]
            elif d > 0:
                out[:, :, : w - d] += src[:, :, d:]
            else:
                out += src
    return out.unsqueeze(0)
