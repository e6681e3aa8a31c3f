"""Frames in, 4x larger frames out at N times the rate (or any rate), over any model.

``model(x)`` maps ``(1, n, 3, h, w)`` floats in [0, 1] to ``(1, 2n-1, 3, s*h, s*w)``
(each input, and the frame halfway after it) and declares its scale ``s`` and
working memory in a ``descriptor`` (:class:`~zsm.models.descriptor.ModelDescriptor`;
the inference engine's prepared networks do); the pipeline knows nothing else of
it. A model whose descriptor has ``time_steps`` is called ``model(x, times=...)``
instead: ``times`` holds, for each of the n-1 gaps between neighbouring inputs, the
increasing times ``0 < t < 1`` wanted in it (possibly none), and it returns the
inputs and those frames in time order, ``(1, n + len(all times), 3, s*h, s*w)``.
A model that ``needs_flow`` also gets ``flow=``: the LR optical flow of every
neighbouring pair, computed here on whole frames (each pair once, shared by
overlapping windows) and cropped with each tile, so that a tile sees motion
larger than itself. It cuts the stream into overlapping temporal windows
(:mod:`zsm.video.windows`), each window into overlapping spatial tiles
(:mod:`zsm.video.tiles`), runs the model on each, and stitches only the owned
centre of every window and tile.

Which frames are made is the output's time plan (:mod:`zsm.video.timing`):
output frame k is at time ``k / rate`` in input frames; each window asks the
model for the plan's times in every gap it spans (so that the network sees the
same sequence whichever window owns a frame) and keeps the frames at the times
it owns. Past the last input there is nothing to interpolate towards: the
last input is held, so the duration stays the input's (at time factor 2, n
inputs give 2n outputs, the last two both the last input).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from zsm.models.descriptor import ModelDescriptor, describe
from zsm.ops.flow import DISFlow
from zsm.video.progress import check_cancel
from zsm.video.tiles import DEFAULT_TILE_OVERLAP, plan_tiles, tile_for_budget
from zsm.video.timing import HALFWAY, OutputTime, TimePlan
from zsm.video.windows import Window, WindowPlan, iter_windows

ModelFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Pipeline:
    """Windowed, tiled inference of ``model`` on ``device``.

    ``tile`` is the core side of the spatial tiles in LR pixels; ``None``
    means automatic: the whole frame if it fits ``memory_budget`` bytes,
    else the largest tile that does. ``times`` is the output's time plan (default: time
    factor 2).
    """

    model: ModelFn
    device: torch.device
    plan: WindowPlan
    tile: int | None = None
    tile_overlap: int = DEFAULT_TILE_OVERLAP
    memory_budget: int | None = None
    cancel: threading.Event | None = None  # checked before every tile
    times: TimePlan = field(default_factory=lambda: TimePlan.factor(2))

    def __post_init__(self) -> None:
        self.descriptor: ModelDescriptor = describe(self.model)
        self._flows = PairFlows() if self.descriptor.needs_flow else None
        if not self.descriptor.time_steps and not self.times.halfway_only:
            raise ValueError(
                f"the model makes only the frame halfway between inputs; {self.times.rate} "
                "output frames per input need a model with time_steps"
            )

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
        call = self._window_call(win, n)
        out = torch.empty(
            (len(call.picks), s * h, s * w, 3), dtype=torch.float32 if as_float else torch.uint8
        )
        if not call.picks:
            return out  # below the input's rate a short window may own no output frame
        picks = torch.tensor(call.picks, dtype=torch.long)
        budget_frames = math.ceil(n * call.outputs / (2 * n - 1))  # memory grows with outputs
        tiles = plan_tiles(
            h,
            w,
            self.tile_size(h, w, budget_frames),
            self.tile_overlap,
            align=self.descriptor.size_multiple,
        )
        flow = None
        if self._flows is not None:
            flow = self._flows.window(frames, win.start).to(self.device)  # (1, n-1, 4, H, W)
        extra = {} if call.times is None else {"times": call.times}
        for tile in tiles:
            check_cancel(self.cancel)
            x = lr[None, :, :, tile.y0 : tile.y1, tile.x0 : tile.x1]  # (1, n, 3, th, tw)
            if flow is None:
                y = self.model(x, **extra)
            else:
                y = self.model(x, flow=flow[..., tile.y0 : tile.y1, tile.x0 : tile.x1], **extra)
            expected = (1, call.outputs, 3, s * x.shape[-2], s * x.shape[-1])
            if tuple(y.shape) != expected:
                raise RuntimeError(f"model returned {tuple(y.shape)}, expected {expected}")
            # Keep the owned frames and the tile's core, in HR pixels.
            y = y[
                0,
                :,
                :,
                s * (tile.ky0 - tile.y0) : s * (tile.ky1 - tile.y0),
                s * (tile.kx0 - tile.x0) : s * (tile.kx1 - tile.x0),
            ][picks.to(y.device)].float()
            y = y.permute(0, 2, 3, 1)  # (t, th, tw, 3)
            if not as_float:
                y = y.clamp_(0.0, 1.0).mul_(255.0).add_(0.5).floor_().to(torch.uint8)
            out[:, s * tile.ky0 : s * tile.ky1, s * tile.kx0 : s * tile.kx1] = y.cpu()
            del x, y
        return out

    def _window_call(self, win: Window, n: int) -> WindowCall:
        """What to ask the model for on window ``win`` of ``n`` inputs, and which of its
        outputs are the window's output frames."""
        first, stop = win.owned_times
        owned = [
            self.times.at(k, win.stop if win.last else None)
            for k in self.times.outputs(first, stop, win.stop)
        ]
        while len(owned) >= 2 and owned[-1] == owned[-2]:
            owned.pop()  # the held last input: made once, repeated by output_frames
        if not self.descriptor.time_steps:
            # Inputs and halfway frames at 2i and 2i+1 of the model's 2n-1 outputs.
            return WindowCall(None, 2 * n - 1, [_halfway_pick(o, win.start) for o in owned])
        gaps = [self.times.gap_times(win.start + g) for g in range(n - 1)]
        position = list(itertools.accumulate((1 + len(g) for g in gaps), initial=0))
        picks = []
        for o in owned:
            g = o.gap - win.start
            picks.append(position[g] if o.on_input else position[g] + 1 + gaps[g].index(o.t))
        times = [tuple(float(t) for t in g) for g in gaps]
        return WindowCall(times, position[-1] + 1, picks)

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


@dataclass(frozen=True)
class WindowCall:
    """One window's model call: ``times`` to pass (``None``: a halfway model, called without),
    the frames it returns, and which of them are the window's outputs, in order."""

    times: list[tuple[float, ...]] | None
    outputs: int
    picks: list[int]


def _halfway_pick(o: OutputTime, start: int) -> int:
    if not o.on_input and o.t != HALFWAY:
        raise ValueError(f"a halfway model cannot make t = {o.t}")
    return 2 * (o.gap - start) + (0 if o.on_input else 1)


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
    win: Window, chunk: torch.Tensor, *, times: TimePlan | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(output index, frame)`` pairs of one window's chunk, in time order.

    ``chunk`` is what :meth:`Pipeline.run_window` made with the time plan ``times``
    (default: time factor 2): the window's output frames from its first owned time on;
    after the last window, the frames held at the last input repeat its last row up to
    the plan's count (time factor N: n inputs -> nN outputs).
    """
    times = times or TimePlan(Fraction(2))
    first = times.first_at(win.owned_times[0])
    for r in range(chunk.shape[0]):
        yield first + r, chunk[r]
    if win.last:
        for k in range(first + chunk.shape[0], times.count(win.stop)):
            yield k, chunk[-1]  # the last input has no successor to move towards: hold it
