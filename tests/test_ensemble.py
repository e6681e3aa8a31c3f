"""Self-ensemble: transforms, their inverses, the average, and its use by the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from zsm import ZoomingSlowMo, ZSMConfig
from zsm.engine.ensemble import (
    ENSEMBLE_PASSES,
    SelfEnsemble,
    transform,
    untransform,
    with_ensemble,
)
from zsm.models.zsm import bicubic_skip
from zsm.upscale import upscale_frames

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny() -> ZoomingSlowMo:
    torch.manual_seed(0)
    config = ZSMConfig(nf=8, groups=2, front_RBs=1, back_RBs=1, hr_nf=8, global_skip=True)
    return ZoomingSlowMo(config).eval()


class Bicubic(nn.Module):
    """The classical baseline as a model: equivariant to every transform of the ensemble."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return bicubic_skip(frames)


@pytest.mark.parametrize("k", range(16))
def test_untransform_inverts_transform(k: int) -> None:
    x = torch.rand(2, 4, 3, 5, 7)
    y = transform(x, k)
    assert y.shape == ((2, 4, 3, 7, 5) if k & 8 else x.shape)
    assert torch.equal(untransform(y, k), x)
    # Distinct transforms give distinct tensors (each bit does something).
    assert k == 0 or not torch.equal(y.reshape(-1)[: x.numel()], x.reshape(-1))


@pytest.mark.parametrize("passes", ENSEMBLE_PASSES)
def test_an_equivariant_model_is_unchanged(passes: int) -> None:
    """If the outputs were put back at the wrong place or time, the average would blur."""
    x = torch.rand(1, 3, 3, 6, 9)
    with torch.no_grad():
        ref = Bicubic()(x)
        got = SelfEnsemble(Bicubic(), passes)(x)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)


def test_two_passes_are_the_mean_with_time_reversed(tiny: ZoomingSlowMo) -> None:
    x = torch.rand(1, 3, 3, 10, 13)
    with torch.no_grad():
        ref = 0.5 * (tiny(x) + tiny(x.flip(1)).flip(1))
        got = SelfEnsemble(tiny, 2)(x)
        sixteen = SelfEnsemble(tiny, 16)(x)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert sixteen.shape == ref.shape and not torch.allclose(sixteen, ref, atol=1e-4)


def test_bad_pass_counts_and_one_pass(tiny: ZoomingSlowMo) -> None:
    for passes in (0, 3, 32):
        with pytest.raises(ValueError, match="1, 2, 4, 8, 16"):
            SelfEnsemble(tiny, passes)
    assert with_ensemble(tiny, 1) is tiny
    assert isinstance(with_ensemble(tiny, 4), SelfEnsemble)


def test_pipeline_runs_the_ensemble(tiny: ZoomingSlowMo) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8) for _ in range(4)]
    plain = list(upscale_frames(frames, model=tiny, device="cpu", window=4))
    both = list(upscale_frames(frames, model=tiny, device="cpu", window=4, ensemble=2))
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)[None]
    with torch.no_grad():
        ref = SelfEnsemble(tiny, 2)(x)[0]
    ref8 = ref.clamp(0, 1).mul(255).add(0.5).floor().to(torch.uint8).permute(0, 2, 3, 1)
    assert len(both) == len(plain) == 8
    assert all(np.array_equal(b, r) for b, r in zip(both[:7], ref8.numpy(), strict=True))
    assert any(not np.array_equal(p, b) for p, b in zip(plain, both, strict=True))
