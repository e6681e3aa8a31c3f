"""Explicit map from the official Zooming Slow-Mo checkpoint names to ours.

The official release names its modules after the code it grew from
(``conv_first``, ``pcd_align.L2_offset_conv3_1``, ``ConvBLSTM.forward_net``,
...). Every official name is produced here from small tables of
``(official, ours)`` pairs, so the correspondence can be read and tested in
one place; nothing is matched by guesswork.
"""

from __future__ import annotations

from zsm.models.config import ZSMConfig

# Leaves of one pyramid-alignment branch: official stem (before the _1/_2
# suffix) -> our sub-module path.
_ALIGN_LEAVES: tuple[tuple[str, str], ...] = (
    ("L3_offset_conv1", "l3.offset_in"),
    ("L3_offset_conv2", "l3.offset_out"),
    ("L3_dcnpack", "l3.dcn"),
    ("L2_offset_conv1", "l2.offset_in"),
    ("L2_offset_conv2", "l2.offset_merge"),
    ("L2_offset_conv3", "l2.offset_out"),
    ("L2_dcnpack", "l2.dcn"),
    ("L2_fea_conv", "l2.fuse"),
    ("L1_offset_conv1", "l1.offset_in"),
    ("L1_offset_conv2", "l1.offset_merge"),
    ("L1_offset_conv3", "l1.offset_out"),
    ("L1_dcnpack", "l1.dcn"),
    ("L1_fea_conv", "l1.fuse"),
)
# The _1 weights align the first argument, the _2 weights the second.
_ALIGN_SIDES: tuple[tuple[str, str], ...] = (("_1", "align_a"), ("_2", "align_b"))
# Tensors of a modulated deformable conv pack.
_DCN_TENSORS: tuple[tuple[str, str], ...] = (
    ("weight", "weight"),
    ("bias", "bias"),
    ("conv_offset_mask.weight", "offset_mask.weight"),
    ("conv_offset_mask.bias", "offset_mask.bias"),
)
_PYRAMID: tuple[tuple[str, str], ...] = (
    ("fea_L2_conv1", "pyramid.l2_down"),
    ("fea_L2_conv2", "pyramid.l2_conv"),
    ("fea_L3_conv1", "pyramid.l3_down"),
    ("fea_L3_conv2", "pyramid.l3_conv"),
)
_RECON_TAIL: tuple[tuple[str, str], ...] = (
    ("upconv1", "reconstruct.up1"),
    ("upconv2", "reconstruct.up2"),
    ("HRconv", "reconstruct.hr_conv"),
    ("conv_last", "reconstruct.out_conv"),
)
_CONV = (("weight", "weight"), ("bias", "bias"))


def _conv(official: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{official}.{a}", f"{ours}.{b}") for a, b in _CONV]


def _blocks(official: str, ours: str, count: int) -> list[tuple[str, str]]:
    pairs = []
    for i in range(count):
        for conv in ("conv1", "conv2"):
            pairs += _conv(f"{official}.{i}.{conv}", f"{ours}.{i}.{conv}")
    return pairs


def _interpolation(official: str, ours: str, fusion: str) -> list[tuple[str, str]]:
    """A FeatureInterpolation: both alignment branches plus the 1x1 blend."""
    pairs = []
    for suffix, side in _ALIGN_SIDES:
        for stem, leaf in _ALIGN_LEAVES:
            if "dcnpack" in stem:
                pairs += [
                    (f"{official}{stem}{suffix}.{a}", f"{ours}{side}.{leaf}.{b}")
                    for a, b in _DCN_TENSORS
                ]
            else:
                pairs += _conv(f"{official}{stem}{suffix}", f"{ours}{side}.{leaf}")
    return pairs + _conv(fusion, f"{ours}blend")


def _pyramid(official_prefix: str, ours_prefix: str) -> list[tuple[str, str]]:
    pairs = []
    for off, our in _PYRAMID:
        pairs += _conv(f"{official_prefix}{off}", f"{ours_prefix}{our}")
    return pairs


def official_name_map(config: ZSMConfig) -> dict[str, str]:
    """``{official name: our name}`` for every tensor of an official checkpoint of ``config``."""
    pairs = _conv("conv_first", "extract.head")
    pairs += _blocks("feature_extraction", "extract.trunk", config.front_RBs)
    pairs += _pyramid("", "extract.")
    pairs += _interpolation("pcd_align.", "interpolate.", "fusion")
    lstm = "ConvBLSTM.forward_net."
    pairs += _conv(f"{lstm}cell_list.0.conv", "aggregate.cell.gates")
    for state in ("h", "c"):
        off, ours = f"{lstm}pcd_{state}.", f"aggregate.cell.align_{state}."
        pairs += _pyramid(off, ours)
        pairs += _interpolation(f"{off}pcd_align.", f"{ours}interp.", f"{off}fusion")
    pairs += _conv("ConvBLSTM.conv_1x1", "aggregate.merge")
    pairs += _blocks("recon_trunk", "reconstruct.trunk", config.back_RBs)
    for off, ours in _RECON_TAIL:
        pairs += _conv(off, ours)
    return dict(pairs)
