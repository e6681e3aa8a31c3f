"""HR frame reconstruction: residual trunk, two x2 PixelShuffles, output convs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from zsm.models.blocks import ResidualBlock, conv3x3, lrelu_, make_layer

# Largest tensor of the HR tail in one band, in bytes (inference on the CPU, see
# Reconstructor.forward). Under glibc's largest dynamic mmap threshold (32 MB), so freed
# bands are reused from the heap instead of being unmapped and page-faulted in again.
BAND_BYTES = 16 << 20


class Reconstructor(nn.Module):
    """(N, nf, H, W) features -> (N, 3, 4H, 4W) frames.

    ``back_RBs`` residual blocks, then ``lrelu(shuffle2(up1(.)))`` (nf
    channels), ``lrelu(shuffle2(up2(.)))`` (``hr_nf`` channels, 64 in the
    paper), ``lrelu(hr_conv(.))`` and ``out_conv``.

    ``band_bytes``: on the CPU without autograd, the network runs one frame at
    a time and the part after ``up1`` (whose tensors are 16x the input's) one
    band of rows at a time, each band's largest tensor at most this many bytes
    (0: all frames at once, whole). Bands read one extra row each side from
    their neighbours, so the result is the whole-frame result (up to float
    rounding of the conv kernels); the peak memory of the tail drops from N
    whole HR tensors to one band, and no tensor is large enough for the
    allocator to map fresh pages for it.
    """

    def __init__(self, *, nf: int = 64, back_RBs: int = 40, hr_nf: int = 64) -> None:
        super().__init__()
        self.trunk = make_layer(lambda: ResidualBlock(nf=nf), back_RBs)
        self.up1 = conv3x3(nf, 4 * nf)
        self.up2 = conv3x3(nf, 4 * hr_nf)
        self.hr_conv = conv3x3(hr_nf, hr_nf)
        self.out_conv = conv3x3(hr_nf, 3)
        self.band_bytes = BAND_BYTES

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last inside: the HR convs run faster in it (CPU: oneDNN's NHWC kernels;
        # GPU: tensor cores), and a pixel shuffle in NHWC moves whole channel runs instead
        # of single floats (on the CPU 7x faster: 190 -> 28 ms for five 704x576 frames).
        # (CPU inference is NHWC from the first conv on: zsm.models.layout.)
        x = x.contiguous(memory_format=torch.channels_last)
        if torch.is_grad_enabled() or not self.banded_on(x.device):
            x = lrelu_(F.pixel_shuffle(self.up1(self.trunk(x)), 2))
            x = lrelu_(F.pixel_shuffle(self.up2(x), 2))
            return self.out_conv(lrelu_(self.hr_conv(x))).contiguous()
        # Frame by frame (the trunk's tensors stay a few MB, reused from the heap: 113 vs
        # 107 GFLOP/s for 1 vs 5 frames at 176x144 even without page faults), then bands.
        n, _, h, w = x.shape
        out = x.new_empty(n, 3, 4 * h, 4 * w)
        for i in range(n):
            y = lrelu_(F.pixel_shuffle(self.up1(self.trunk(x[i : i + 1])), 2))
            rows = self._band_rows(y)
            for r0 in range(0, 2 * h, rows):
                r1 = min(r0 + rows, 2 * h)
                out[i : i + 1, :, 2 * r0 : 2 * r1] = self._band(y, r0, r1)
        return out

    def banded_on(self, device: torch.device) -> bool:
        """Whether inference on ``device`` runs the HR tail in bands (the CPU, bands on)."""
        return self.band_bytes > 0 and device.type == "cpu"

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
        y = _conv_rows(self.up2, x[..., max(s0 - 1, 0) : s1 + 1, :], s0 == 0, s1 == h)
        y = lrelu_(F.pixel_shuffle(y, 2))  # HR rows [2 s0, 2 s1)
        y = lrelu_(_conv_rows(self.hr_conv, y, s0 == 0, s1 == h))  # [2 r0 - 1, 2 r1 + 1)
        return _few_outputs_conv_rows(self.out_conv, y, r0 == 0, r1 == h)  # [2 r0, 2 r1)


def _pad_rows(x: torch.Tensor, top: bool, bottom: bool) -> torch.Tensor:
    """A zero row above and/or below ``x``: the conv's padding at the image border."""
    return F.pad(x, (0, 0, int(top), int(bottom))) if top or bottom else x


def _conv_rows(conv: nn.Conv2d, x: torch.Tensor, top: bool, bottom: bool) -> torch.Tensor:
    """``conv`` over rows whose first and last are halo (dropped) unless at the image border.

    At a border the conv's zero padding applies instead; columns are padded as usual.
    """
    return F.conv2d(_pad_rows(x, top, bottom), conv.weight, conv.bias, padding=(0, 1))


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
