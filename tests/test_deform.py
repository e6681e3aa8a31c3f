"""The deformable-conv interface: DCNv2 semantics checked against independent references."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from zsm.models.deform import ModulatedDeformConv2d
from zsm.ops.dcn import available_backends, modulated_deform_conv2d


def reference_deform_conv(x, offset, mask, weight, bias):
    """Modulated deformable 3x3 conv by ``grid_sample``: one bilinear sample per kernel point."""
    b, cin, h, w = x.shape
    k = weight.shape[-1]
    groups = mask.shape[1] // (k * k)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij"
    )
    cols = []
    for g in range(groups):
        xg = x[:, g * cin // groups : (g + 1) * cin // groups]
        for p in range(k * k):
            dy, dx = p // k - k // 2, p % k - k // 2
            oy = offset[:, 2 * (g * k * k + p)]
            ox = offset[:, 2 * (g * k * k + p) + 1]
            py, px = ys + dy + oy, xs + dx + ox
            grid = torch.stack((2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1), dim=-1)
            sampled = F.grid_sample(
                xg, grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )
            cols.append((g, p, sampled * mask[:, g * k * k + p].unsqueeze(1)))
    out = torch.zeros(b, weight.shape[0], h, w, dtype=x.dtype)
    for g, p, sampled in cols:
        wg = weight[:, g * cin // groups : (g + 1) * cin // groups, p // k, p % k]
        out += torch.einsum("oc,bchw->bohw", wg, sampled)
    return out + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("backend", available_backends())
def test_zero_offset_unit_mask_is_a_plain_conv(backend: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 11)
    weight, bias = torch.randn(6, 8, 3, 3), torch.randn(6)
    offset = torch.zeros(2, 2 * 4 * 9, 9, 11)
    mask = torch.ones(2, 4 * 9, 9, 11)
    out = modulated_deform_conv2d(x, offset, mask, weight, bias, backend=backend)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", available_backends())
def test_random_offsets_match_grid_sample_reference(backend: str) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 8, 7, 10, dtype=torch.float64)
    weight, bias = torch.randn(5, 8, 3, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    offset = 3 * torch.randn(2, 2 * 2 * 9, 7, 10, dtype=torch.float64)  # some fall outside
    mask = torch.rand(2, 2 * 9, 7, 10, dtype=torch.float64)
    expected = reference_deform_conv(x, offset, mask, weight, bias)
    out = modulated_deform_conv2d(
        x.float(), offset.float(), mask.float(), weight.float(), bias.float(), backend=backend
    )
    assert (out.double() - expected).abs().max().item() <= 1e-4


def test_pack_starts_as_regular_grid_with_half_mask() -> None:
    torch.manual_seed(2)
    layer = ModulatedDeformConv2d(8, 4, offset_groups=2)
    x, feat = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    expected = F.conv2d(0.5 * x, layer.weight, layer.bias, padding=1)
    torch.testing.assert_close(layer(x, feat), expected, atol=1e-5, rtol=1e-5)


def test_pack_rejects_bad_group_count() -> None:
    with pytest.raises(ValueError, match="divisible by offset_groups"):
        ModulatedDeformConv2d(10, 10, offset_groups=4)
