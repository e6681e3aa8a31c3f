"""im2col / col2im of the deformable conv with PyTorch ops only (any dtype, any device).

Corners and weights are elementwise ops; sampling is one
:func:`torch.nn.functional.embedding_bag` (a fused gather-multiply-add over
rows of ``Cg`` floats), whose autograd supplies the scatter and the
per-corner dot products. The path where the native kernel is unavailable,
and the one for float64 (``gradcheck``) and other dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from zsm.ops.dcn.geometry import Chunk, Geom

# Sampling points per chunk: bounds the temporaries (~100 B a point).
PURE_CHUNK_POINTS = 1 << 19


@dataclass
class Corners:
    """Bilinear corners of the sampling points of a batch slice, (n, Ho, Wo, G, KK[, 4])."""

    rows: torch.Tensor  # int64 row of each corner in the (B*G*H*W, Cg) table
    bil: torch.Tensor  # bilinear weight of each corner, 0 outside the image
    valid: torch.Tensor  # 1 where the corner is inside the image, else 0
    ly: torch.Tensor
    lx: torch.Tensor
    mask: torch.Tensor  # (n, Ho, Wo, G, KK)


def corners(offset: torch.Tensor, mask: torch.Tensor, geo: Geom, b0: int, b1: int) -> Corners:
    n, dev, dt = b1 - b0, offset.device, offset.dtype
    off = offset[b0:b1].reshape(n, geo.g, geo.kk, 2, geo.ho, geo.wo).permute(0, 4, 5, 1, 2, 3)
    m = mask[b0:b1].reshape(n, geo.g, geo.kk, geo.ho, geo.wo).permute(0, 3, 4, 1, 2)
    ki = torch.arange(geo.kh, device=dev).repeat_interleave(geo.kw)
    kj = torch.arange(geo.kw, device=dev).repeat(geo.kh)
    base_y = (torch.arange(geo.ho, device=dev) - geo.pad).view(geo.ho, 1, 1, 1) + ki
    base_x = (torch.arange(geo.wo, device=dev) - geo.pad).view(1, geo.wo, 1, 1) + kj
    # Integer base + offset in the working dtype, as torchvision rounds it.
    y = base_y.to(dt) + off[..., 0]
    x = base_x.to(dt) + off[..., 1]
    # Some corner inside (else everything is 0; also keeps NaN/inf away from .long()).
    inside = (y > -2) & (y < geo.h) & (x > -2) & (x < geo.w)
    y = torch.where(inside, y, 0.0)
    x = torch.where(inside, x, 0.0)
    fy, fx = torch.floor(y), torch.floor(x)
    ly, lx = y - fy, x - fx
    y0, x0 = fy.long(), fx.long()
    vy0 = inside & (y0 >= 0) & (y0 < geo.h)
    vy1 = inside & (y0 >= -1) & (y0 + 1 < geo.h)
    vx0, vx1 = (x0 >= 0) & (x0 < geo.w), (x0 >= -1) & (x0 + 1 < geo.w)
    cy0, cy1 = y0.clamp(0, geo.h - 1), (y0 + 1).clamp(0, geo.h - 1)
    cx0, cx1 = x0.clamp(0, geo.w - 1), (x0 + 1).clamp(0, geo.w - 1)
    bidx = torch.arange(b0, b1, device=dev).view(n, 1, 1, 1, 1)
    gidx = torch.arange(geo.g, device=dev).view(1, 1, 1, geo.g, 1)
    image = (bidx * geo.g + gidx) * geo.h  # first row of each group's image
    r0, r1 = (image + cy0) * geo.w, (image + cy1) * geo.w
    rows = torch.stack((r0 + cx0, r0 + cx1, r1 + cx0, r1 + cx1), -1)
    valid = torch.stack((vy0 & vx0, vy0 & vx1, vy1 & vx0, vy1 & vx1), -1).to(dt)
    hy, hx = 1 - ly, 1 - lx
    bil = torch.stack((hy * hx, hy * lx, ly * hx, ly * lx), -1) * valid
    return Corners(rows, bil, valid, ly, lx, m)


class PureSampler:
    """im2col / col2im with PyTorch ops (any dtype), over chunks of whole images.

    Sampling is one ``embedding_bag`` (sum of the four corner rows of ``Cg``
    floats, weighted by bilinear weight x mask); its autograd gives the
    scatter back to the input and the per-corner dot products.
    """

    def __init__(
        self, x_gm: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geo: Geom
    ) -> None:
        self.table = x_gm.detach().reshape(-1, geo.cg)  # row ((b*G + g)*H + y)*W + x
        self.offset, self.mask, self.geo = offset, mask, geo
        per = max(1, PURE_CHUNK_POINTS // max(1, geo.hwo * geo.g * geo.kk))
        self.chunks = [
            Chunk(b, min(geo.b, b + per), 0, geo.hwo, geo.hwo) for b in range(0, geo.b, per)
        ]

    def _corners(self, i: int) -> Corners:
        ch = self.chunks[i]
        return corners(self.offset, self.mask, self.geo, ch.b0, ch.b1)

    def im2col(self, i: int) -> torch.Tensor:
        cor = self._corners(i)
        weights = (cor.bil * cor.mask.unsqueeze(-1)).reshape(-1, 4)
        cols = F.embedding_bag(
            cor.rows.reshape(-1, 4), self.table, mode="sum", per_sample_weights=weights
        )
        return cols.reshape(-1, self.geo.k)

    def col2im(
        self,
        i: int,
        gcols: torch.Tensor,
        gx: torch.Tensor | None,
        goff: torch.Tensor | None,
        gmask: torch.Tensor | None,
    ) -> None:
        geo, b0, b1 = self.geo, self.chunks[i].b0, self.chunks[i].b1
        n = b1 - b0
        cor = self._corners(i)
        need_s = goff is not None or gmask is not None
        with torch.enable_grad():
            t = self.table.detach().requires_grad_(gx is not None)
            w = (cor.bil * cor.mask.unsqueeze(-1)).reshape(-1, 4).detach().requires_grad_(need_s)
            out = F.embedding_bag(cor.rows.reshape(-1, 4), t, mode="sum", per_sample_weights=w)
            inputs = [v for v in (t, w) if v.requires_grad]
            grads = list(torch.autograd.grad(out, inputs, gcols.reshape(-1, geo.cg)))
        if gx is not None:
            gx.view(-1, geo.cg).add_(grads.pop(0))
        if not need_s:
            return
        # s: grad_col . corner (0 outside), the gradient w.r.t. the unmasked bilinear weight.
        s = grads.pop(0).reshape(cor.bil.shape) * cor.valid
        s00, s01, s10, s11 = s.unbind(-1)
        if gmask is not None:
            gm = (s * cor.bil).sum(-1).permute(0, 3, 4, 1, 2)  # (n, G, KK, Ho, Wo)
            gmask[b0:b1] = gm.reshape(n, geo.g * geo.kk, geo.ho, geo.wo)
        if goff is not None:
            hy, hx = 1 - cor.ly, 1 - cor.lx
            gy = cor.mask * (hx * (s10 - s00) + cor.lx * (s11 - s01))
            gxx = cor.mask * (hy * (s01 - s00) + cor.ly * (s11 - s10))
            go = torch.stack((gy, gxx), -1).permute(0, 3, 4, 5, 1, 2)  # (n, G, KK, 2, Ho, Wo)
            goff[b0:b1] = go.reshape(n, 2 * geo.g * geo.kk, geo.ho, geo.wo)
