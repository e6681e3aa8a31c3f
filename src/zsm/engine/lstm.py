"""The ConvLSTM's gate arithmetic in place, for inference."""

from __future__ import annotations

import torch

from zsm.models.convlstm import DeformableConvLSTM


class InplaceGatesConvLSTM(DeformableConvLSTM):
    """:class:`~zsm.models.convlstm.DeformableConvLSTM` whose cell update runs in place.

    ``update`` uses tanh(v) = 2 sigmoid(2v) - 1: one sigmoid over all four
    gates (``g`` doubled first) instead of three sigmoids and a tanh over
    channel slices, since torch's CPU tanh costs 6x its sigmoid and ops on
    slices of channels-last gates run strided. Equal to the plain formula to
    float rounding; it overwrites ``gates``, so it needs autograd off.
    """

    def update(
        self, gates: torch.Tensor, c_aligned: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        nf = c_aligned.shape[1]
        gates[:, 3 * nf :].mul_(2)
        i, f, o, g = torch.sigmoid_(gates).chunk(4, dim=1)  # g holds sigmoid(2g)
        c = (f * c_aligned).addcmul_(i, g, value=2.0).sub_(i)  # f c + i (2 sigmoid(2g) - 1)
        h = torch.mul(c, 2.0).sigmoid_().mul_(2.0).sub_(1.0).mul_(o)  # o tanh(c)
        return h, c
