"""Frames in, 4x larger frames at 2x the rate out, over any model callable.

``model(x)`` maps ``(1, n, 3, h, w)`` floats in [0, 1] to ``(1, 2n-1, 3, s*h, s*w)``
and declares its scale ``s`` and working memory in a ``descriptor``
(:class:`~zsm.models.descriptor.ModelDescriptor`; the inference engine's
prepared networks do); the pipeline knows nothing else of it. A model that ``needs_flow`` also gets
``flow=``: the LR optical flow of every neighbouring pair, computed here on
whole frames (each pair once, shared by overlapping windows) and cropped with
each tile, so that a tile sees motion larger than itself. It cuts the stream
into overlapping temporal windows (:mod:`zsm.video.windows`), each window
into overlapping spatial tiles (:mod:`zsm.video.tiles`), runs the model on
each, and stitches only the owned centre of every window and tile.

The last input frame has no successor to interpolate towards, so n inputs
give 2n-1 network outputs; to keep the video's duration at exactly twice the
frame rate, the last output frame is shown twice (output 2n-1 repeats output
2n-2), as a player holds the last frame of the input for a full frame time.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from zsm.models.descriptor import ModelDescriptor, describe
from zsm.ops.flow import DISFlow
from zsm.video.progress import check_cancel
from zsm.video.tiles import DEFAULT_TILE_OVERLAP, plan_tiles, tile_for_budget
from zsm.video.windows import Window, WindowPlan, iter_windows

ModelFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Pipeline:
    """Windowed, tiled inference of ``model`` on ``device``.

    ``tile`` is the core side of the spatial tiles in LR pixels; ``None``
    means automatic: the whole frame if it fits ``memory_budget`` bytes,
    else the largest tile that does.
    """

    model: ModelFn
    device: torch.device
    plan: WindowPlan
    tile: int | None = None
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    memory_budget: int | None = None
    cancel: threading.Event | None = None  # checked before every tile

    def __post_init__(self) -> None:
        self.descriptor: ModelDescriptor = describe(self.model)
        self._flows = PairFlows() if self.descriptor.needs_flow else None

    def tile_size(self, height: int, width: int, frames: int | None = None) -> int | None:
        """The core tile side for windows of ``frames`` (default: the plan's size) frames of
        ``height`` x ``width`` pixels (``None``: untiled)."""
        if self.tile is not None or self.memory_budget is None:
            return self.tile
        return tile_for_budget(
            height,
            width,
            frames=frames or self.plan.size,
            bytes_per_pixel_frame=self.descriptor.bytes_per_pixel_frame,
            budget=self.memory_budget,
            overlap=self.tile_overlap,
            align=self.descriptor.size_multiple,
        )

    @torch.inference_mode()
    def run_window(
        self, frames: list[np.ndarray], win: Window, *, as_float: bool = False
    ) -> torch.Tensor:
        """The owned outputs of ``win`` as a CPU tensor ``(T, 4H, 4W, 3)``.

        uint8 by default (clamped, rounded); ``as_float`` gives the model's raw
        float32 output instead (for tests and further processing).
        """
        lr = torch.from_numpy(np.stack(frames)).to(self.device)  # (n, H, W, 3) uint8
        lr = lr.permute(0, 3, 1, 2).float().div_(255.0)  # (n, 3, H, W) in [0, 1]
        n, _, h, w = lr.shape
        s = self.descriptor.scale
        keep = win.local_keep
        t = keep.stop - keep.start
        out = torch.empty((t, s * h, s * w, 3), dtype=torch.float32 if as_float else torch.uint8)
        tiles = plan_tiles(
            h, w, self.tile_size(h, w, n), self.tile_overlap, align=self.descriptor.size_multiple
        )
        flow = None
        if self._flows is not None:
            flow = self._flows.window(frames, win.start).to(self.device)  # (1, n-1, 4, H, W)
        for tile in tiles:
            check_cancel(self.cancel)
            x = lr[None, :, :, tile.y0 : tile.y1, tile.x0 : tile.x1]  # (1, n, 3, th, tw)
            if flow is None:
                y = self.model(x)
            else:
                y = self.model(x, flow=flow[..., tile.y0 : tile.y1, tile.x0 : tile.x1])
            expected = (1, 2 * n - 1, 3, s * x.shape[-2], s * x.shape[-1])
            if tuple(y.shape) != expected:
                raise RuntimeError(f"model returned {tuple(y.shape)}, expected {expected}")
            # Keep the owned frames and the tile's core, in HR pixels.
            y = y[
                0,
                keep,
                :,
                s * (tile.ky0 - tile.y0) : s * (tile.ky1 - tile.y0),
                s * (tile.kx0 - tile.x0) : s * (tile.kx1 - tile.x0),
            ].float()
            y = y.permute(0, 2, 3, 1)  # (t, th, tw, 3)
            if not as_float:
                y = y.clamp_(0.0, 1.0).mul_(255.0).add_(0.5).floor_().to(torch.uint8)
            out[:, s * tile.ky0 : s * tile.ky1, s * tile.kx0 : s * tile.kx1] = y.cpu()
            del x, y
        return out

    def run(
        self,
        frames: Iterable[np.ndarray | None],
        *,
        first_window: int = 0,
        as_float: bool = False,
    ) -> Iterator[tuple[Window, torch.Tensor]]:
        """Each window of ``frames`` with its owned outputs, in order (see :meth:`run_window`)."""
        for win, chunk in iter_windows(frames, self.plan, first=first_window):
            yield win, self.run_window(chunk, win, as_float=as_float)


class PairFlows:
    """The flow of each neighbouring pair of a stream's frames, computed once per pair.

    Windows overlap by ``2*overlap + 1`` frames; the flows of the pairs they
    share are kept from the previous window. A pair is recognised by its two
    frame arrays themselves (the windows hand on the same objects), so a new
    stream never meets the old one's flows.
    """

    def __init__(self) -> None:
        self._dis = DISFlow()
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, torch.Tensor]] = {}

    def window(self, frames: list[np.ndarray], start: int) -> torch.Tensor:
        """(1, n-1, 4, H, W) float32 for the ``n`` frames beginning at stream index ``start``."""
        cache, self._cache = self._cache, {}
        out = []
        for i, (a, b) in enumerate(itertools.pairwise(frames)):
            hit = cache.get(start + i)
            flow = hit[2] if hit and hit[0] is a and hit[1] is b else None
            if flow is None:
                flow = torch.from_numpy(self._dis.pair(a, b))
            self._cache[start + i] = (a, b, flow)
            out.append(flow)
        return torch.stack(out)[None]


def output_frames(
    win: Window, chunk: torch.Tensor, *, time_factor: int = 2
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(output index, frame)`` pairs of one window's chunk, in time order.

    ``time_factor=2``: every output, plus the repeated last frame after the
    last window (n inputs -> 2n outputs). ``time_factor=1``: only the frames
    at input times (n inputs -> n outputs, index = input index).
    """
    if time_factor not in (1, 2):
        raise ValueError(f"time factor must be 1 or 2, got {time_factor}")
    for t in range(chunk.shape[0]):
        j = win.keep_start + t
        if time_factor == 2:
            yield j, chunk[t]
        elif j % 2 == 0:
            yield j // 2, chunk[t]
    if win.last and time_factor == 2:
        yield win.keep_stop, chunk[-1]  # the last frame's missing successor: hold it
