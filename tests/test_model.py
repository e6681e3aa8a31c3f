"""The network: shapes, gradients, presets and the official forward-pass test vector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from zsm import ZoomingSlowMo, ZSMConfig
from zsm.models.official_names import official_name_map

DATA = Path(__file__).parent / "data"
TINY = ZSMConfig(nf=8, groups=2, front_RBs=1, back_RBs=1, hr_nf=8)


def official_reference_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (DATA / "zsm_official_keys.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")
        shapes[name] = tuple(int(s) for s in shape.split("x"))
    return shapes


@pytest.mark.parametrize(("n", "h", "w"), [(2, 4, 4), (3, 7, 9), (4, 1, 1), (2, 13, 6)])
@pytest.mark.parametrize("global_skip", [False, True])
def test_output_shape_any_size(n: int, h: int, w: int, global_skip: bool) -> None:
    model = ZoomingSlowMo(ZSMConfig(**{**TINY.__dict__, "global_skip": global_skip})).eval()
    with torch.no_grad():
        out = model(torch.rand(2, n, 3, h, w))
    assert out.shape == (2, 2 * n - 1, 3, 4 * h, 4 * w)
    assert torch.isfinite(out).all()


def test_single_frame_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="n >= 2 input frames, got 1"):
        ZoomingSlowMo(TINY)(torch.rand(1, 1, 3, 8, 8))


def test_wrong_rank_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\(B, n, 3, H, W\)"):
        ZoomingSlowMo(TINY)(torch.rand(1, 3, 8, 8))


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = ZoomingSlowMo(TINY)
    # The release zero-initialises every offset conv; perturb them so that the
    # gradient path through offsets and masks is exercised too.
    for name, p in model.named_parameters():
        if "offset_mask" in name:
            torch.nn.init.normal_(p, std=0.01)
    out = model(torch.rand(1, 3, 3, 8, 12))
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_global_skip_untrained_starts_at_bicubic_baseline() -> None:
    model = ZoomingSlowMo(ZSMConfig(**{**TINY.__dict__, "global_skip": True}))
    # Zero the output conv: the network's residual vanishes and only the skip remains.
    torch.nn.init.zeros_(model.reconstruct.out_conv.weight)
    torch.nn.init.zeros_(model.reconstruct.out_conv.bias)
    frames = torch.rand(1, 2, 3, 8, 8)
    with torch.no_grad():
        out = model(frames)
    up = torch.nn.functional.interpolate(frames[0], scale_factor=4, mode="bicubic")
    torch.testing.assert_close(out[0, 0], up[0])
    torch.testing.assert_close(out[0, 2], up[1])
    torch.testing.assert_close(out[0, 1], 0.5 * (up[0] + up[1]))


def test_official_preset_parameter_count() -> None:
    model = ZoomingSlowMo.from_preset("official")
    assert sum(p.numel() for p in model.parameters()) == 11_102_771


def test_official_state_dict_maps_onto_reference_names_and_shapes() -> None:
    model = ZoomingSlowMo.from_preset("official")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    reference = official_reference_shapes()
    names = official_name_map(model.config)
    assert set(names) == set(reference)
    assert sorted(names.values()) == sorted(ours)
    mismatched = [k for k, shape in reference.items() if ours[names[k]] != shape]
    assert mismatched == []


def test_unknown_preset_and_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ZoomingSlowMo.from_preset("huge")
    with pytest.raises(ValueError, match="divisible by groups"):
        ZSMConfig(nf=10, groups=4)


def test_padding_is_cropped_consistently() -> None:
    """An odd-size input gives the same pixels as the same input padded by hand, then cropped."""
    torch.manual_seed(1)
    model = ZoomingSlowMo(TINY).eval()
    frames = torch.rand(1, 2, 3, 5, 7)
    padded = torch.nn.functional.pad(frames.flatten(0, 1), (0, 1, 0, 3), mode="replicate")
    with torch.no_grad():
        odd = model(frames)
        full = model(padded.unflatten(0, (1, 2)))
    torch.testing.assert_close(odd, full[..., :20, :28])


def load_test_vector() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    with safe_open(str(DATA / "zsm_official_small_vector.safetensors"), framework="pt") as f:
        weights = {k.removeprefix("weights."): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        weights = {k: v for k, v in weights.items() if k not in ("input", "output")}
        return weights, f.get_tensor("input"), f.get_tensor("output")


def test_official_forward_vector_through_convert_weights(tmp_path: Path) -> None:
    """Save the vector's weights as an official .pth, convert with the CLI, reproduce the output."""
    from zsm import load_model
    from zsm.cli import main

    weights, x, expected = load_test_vector()
    pth = tmp_path / "official.pth"
    # DataParallel-style prefix and a wrapper dict, as official training saves them.
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, pth)
    out_file = tmp_path / "converted.safetensors"
    assert main(["convert-weights", str(pth), str(out_file)]) == 0
    model = load_model(out_file)
    assert model.config == ZSMConfig(nf=16, groups=4, front_RBs=1, back_RBs=2, hr_nf=64)
    with torch.no_grad():
        out = model(x.float())
    assert out.shape == expected.shape
    assert (out.double() - expected).abs().max().item() <= 1e-4
