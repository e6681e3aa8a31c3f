"""Training samples at several time steps (data.time_factors): the factor draw, which
frames become targets, their times under reversal, short clips, exact synthetic renders,
validation at x4, and samples unchanged without time factors."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from zsm.data.augment import AugmentConfig
from zsm.data.concat import ConcatSources
from zsm.data.datasets import (
    FrameFolderClips,
    TimedClipSource,
    VideoFolderClips,
    VimeoSeptuplets,
    span_start,
)
from zsm.data.pairs import DegradeConfig, TrainingPairs
from zsm.data.synthetic import MotionConfig, SyntheticMotion
from zsm.data.timesteps import SampleTimes, TimeFactors
from zsm.training.build import build_training_set, build_validation, build_validation_at
from zsm.training.config import ConfigError, DataSection, TrainConfig

SIDE = 16  # HR side of the test frames: one 4x4 LR patch


class Indexed:
    """An in-memory timed source: frame i of clip c is filled with the value i (all
    channels), so every target tells which frame it was; clips of ``lengths`` frames."""

    def __init__(self, lengths: list[int], length: int) -> None:
        self.lengths, self.length = lengths, length

    def __len__(self) -> int:
        return len(self.lengths)

    def clip(self, index: int, rng: np.random.Generator) -> np.ndarray:
        return self.frames_at(index, range(self.length), rng)

    def span(self, index: int) -> int:
        return self.lengths[index]

    def frames_at(self, index: int, offsets, rng: np.random.Generator) -> np.ndarray:
        first = span_start(0, self.lengths[index], self.length, offsets[-1] + 1, "test")
        values = np.array([first + o for o in offsets], dtype=np.uint8)
        return np.broadcast_to(values[:, None, None, None], (len(values), SIDE, SIDE, 3)).copy()


def values(frames: torch.Tensor) -> list[int]:
    """The fill value of every (constant) frame of (T, 3, H, W) in [0, 1]."""
    v = frames.mul(255).round()
    assert torch.equal(v, v[:, :1, :1, :1].expand_as(v)), "frames are not constant"
    return [int(x) for x in v[:, 0, 0, 0]]


def check_targets(lr: torch.Tensor, hr: torch.Tensor, times: torch.Tensor) -> tuple[int, bool]:
    """The inputs are every N-th frame, each in-between target the frame j/N of the way
    to the next input, j/N its time: returns (N, reversed)."""
    hv, lv = values(hr), values(lr)
    assert lv == hv[0::2]  # the LR inputs are the even targets
    steps = np.diff(hv[0::2])
    assert len(set(steps.tolist())) == 1 and steps[0] != 0
    factor, backwards = abs(int(steps[0])), bool(steps[0] < 0)
    assert times.dtype == torch.float32 and times.shape == (len(lv) - 1, 1)
    for k in range(len(lv) - 1):
        j = (hv[2 * k + 1] - hv[2 * k]) * (-1 if backwards else 1)
        assert 1 <= j < factor
        assert times[k, 0].item() == np.float32(j / factor)
    return factor, backwards


# --- the draw -------------------------------------------------------------------------


def test_plan_offsets_times_and_reversal() -> None:
    plan = SampleTimes(4, (1, 3, 2))
    assert plan.inputs == 4 and plan.span == 13
    assert plan.offsets == (0, 1, 4, 7, 8, 10, 12)
    assert plan.times().flatten().tolist() == [0.25, 0.75, 0.5]
    back = plan.reversed()
    assert back == SampleTimes(4, (2, 1, 3))
    # Played backwards, offset o becomes span-1-o: the in-betweens of the reversed plan.
    assert back.offsets == tuple(plan.span - 1 - o for o in reversed(plan.offsets))
    assert SampleTimes(2, (1, 1, 1)).offsets == tuple(range(7))  # the classic 7-frame clip


def test_draw_is_seeded_weighted_and_fits_the_clip() -> None:
    tf = TimeFactors((2, 3, 4, 8), (0.4, 0.2, 0.25, 0.15))
    draws = [tf.draw(np.random.default_rng(s)) for s in range(4000)]
    assert draws[:50] == [tf.draw(np.random.default_rng(s)) for s in range(50)]
    counts = Counter(p.factor for p in draws)
    for factor, weight in zip(tf.factors, tf.weights or (), strict=True):
        assert abs(counts[factor] / len(draws) - weight) < 0.03, counts
    for p in draws:
        assert len(p.steps) == 3 and all(1 <= j < p.factor for j in p.steps)
    assert {j for p in draws if p.factor == 8 for j in p.steps} == set(range(1, 8))
    # A clip of 16 frames fits spans of 7, 10, 13 (N = 2, 3, 4), not 25 (N = 8).
    short = Counter(tf.draw(np.random.default_rng(s), 16).factor for s in range(600))
    assert set(short) == {2, 3, 4}
    assert {tf.draw(np.random.default_rng(s), 9).factor for s in range(50)} == {2}
    with pytest.raises(ValueError, match="no time factor"):
        tf.draw(np.random.default_rng(0), 6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factors": ()}, "at least one"),
        ({"factors": (1, 2)}, "integers >= 2"),
        ({"factors": (2, 2)}, "repeat"),
        ({"factors": (2, 3), "weights": (1.0,)}, "1 weights for 2"),
        ({"factors": (2, 3), "weights": (1.0, 0.0)}, "> 0"),
        ({"factors": (2,), "inputs": 1}, ">= 2 inputs"),
    ],
)
def test_time_factor_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TimeFactors(**kwargs)


# --- samples --------------------------------------------------------------------------


@pytest.mark.parametrize("flow", [False, True])
def test_samples_pick_the_right_frames_and_times(flow: bool) -> None:
    tf = TimeFactors((2, 3, 4, 8))
    pairs = TrainingPairs(
        Indexed([40, 30], tf.min_span), augment=AugmentConfig(lr_patch=4), flow=flow, times=tf
    )
    seen: set[tuple[int, bool]] = set()
    times_seen: set[float] = set()
    for seed in range(48):
        sample = pairs[(seed % 2, seed)]
        assert len(sample) == (4 if flow else 3)
        lr, hr, times = sample[0], sample[1], sample[-1]
        assert lr.shape == (4, 3, 4, 4) and hr.shape == (7, 3, 16, 16)
        if flow:
            assert sample[2].shape == (3, 4, 4, 4)
        seen.add(check_targets(lr, hr, times))
        times_seen |= set(times.flatten().tolist())
        again = pairs[(seed % 2, seed)]  # a pure function of the key
        assert all(torch.equal(a, b) for a, b in zip(sample, again, strict=True))
    assert {n for n, _ in seen} == {2, 3, 4, 8}  # N drawn per sample
    assert {b for _, b in seen} == {False, True}  # reversal maps the times too
    assert len(times_seen) > 8


def test_batches_mix_factors_and_steps() -> None:
    tf = TimeFactors((2, 4))
    pairs = TrainingPairs(Indexed([30], tf.min_span), augment=AugmentConfig(lr_patch=4), times=tf)
    batch = torch.utils.data.default_collate([pairs[(0, s)] for s in range(8)])
    assert [tuple(t.shape) for t in batch] == [(8, 4, 3, 4, 4), (8, 7, 3, 16, 16), (8, 3, 1)]
    assert len(set(batch[2].flatten().tolist())) > 1


def test_static_samples_keep_valid_times() -> None:
    tf = TimeFactors((3,))
    pairs = TrainingPairs(
        Indexed([30], tf.min_span), augment=AugmentConfig(lr_patch=4), static_prob=1, times=tf
    )
    _, hr, times = pairs[(0, 3)]
    assert len(set(values(hr))) == 1 and times.shape == (3, 1)
    assert set(times.flatten().tolist()) <= {float(np.float32(1 / 3)), float(np.float32(2 / 3))}


def write_frames(root: Path, lengths: list[int]) -> None:
    for c, n in enumerate(lengths):
        for i in range(n):
            path = root / f"clip{c}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((SIDE, SIDE + 4, 3), i, np.uint8)).save(path)


def write_video(path: Path, count: int) -> None:
    """Lossless RGB H.264, B-frames, a key frame every 5: frame i filled with 8*i."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=25)
        stream.width, stream.height, stream.pix_fmt = SIDE + 4, SIDE, "rgb24"
        stream.codec_context.gop_size = 5
        stream.options = {"qp": "0", "bf": "2", "preset": "ultrafast"}
        for i in range(count):
            frame = np.full((SIDE, SIDE + 4, 3), 8 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def test_file_sources_read_only_the_planned_frames(tmp_path: Path) -> None:
    write_frames(tmp_path / "frames", [12, 20])
    write_video(tmp_path / "v.mp4", 20)
    folder = FrameFolderClips(tmp_path / "frames", length=7, stride=2)
    plan = SampleTimes(4, (1, 3, 2))  # span 13: does not fit clip0's 12 frames
    assert [folder.span(i) for i in range(len(folder))] == [12] * 3 + [20] * 7
    last = len(folder) - 1  # window 14..20 of clip1
    got = folder.frames_at(last, plan.offsets, None)[:, 0, 0, 0]
    assert got.tolist() == [6 + o for o in plan.offsets]  # start 12 of 0..13 -> 6 of 0..7
    first = folder.frames_at(3, plan.offsets, None)[:, 0, 0, 0]
    assert first.tolist() == list(plan.offsets)
    with pytest.raises(IndexError, match="does not fit"):
        folder.frames_at(0, plan.offsets, None)
    np.testing.assert_array_equal(folder.frames_at(4, range(7), None), folder.clip(4, None))
    for cache in (0, 64):
        video = VideoFolderClips(tmp_path / "v.mp4", length=7, cache_mb=cache)
        for i in (0, 5, 13):
            start = span_start(i, 20, 7, 13, "v")
            got = video.frames_at(i, plan.offsets, None)[:, 0, 0, 0]
            assert got.tolist() == [8 * (start + o) for o in plan.offsets], (cache, i)
            np.testing.assert_array_equal(video.frames_at(i, range(7), None), video.clip(i, None))


def test_span_start_spreads_windows_over_the_starts_that_fit() -> None:
    starts = [span_start(s, 30, 7, 25, "x") for s in range(24)]
    assert starts[0] == 0 and starts[-1] == 5 and starts == sorted(starts)
    assert [span_start(s, 30, 7, 7, "x") for s in range(24)] == list(range(24))
    assert span_start(0, 7, 7, 7, "x") == 0


def test_vimeo_and_concat_sources_read_spans(tmp_path: Path) -> None:
    root = tmp_path / "vimeo"
    (root / "sep_trainlist.txt").parent.mkdir(parents=True)
    (root / "sep_trainlist.txt").write_text("00001/0001\n")
    for i in range(1, 8):
        path = root / "sequences" / "00001" / "0001" / f"im{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((SIDE, SIDE, 3), i, np.uint8)).save(path)
    vimeo = VimeoSeptuplets(root, length=5)
    got = vimeo.frames_at(0, (0, 2, 4), np.random.default_rng(1))[:, 0, 0, 0].tolist()
    assert got[1] - got[0] == 2 and got[2] - got[0] == 4 and 1 <= got[0] <= 3
    write_frames(tmp_path / "frames", [9])
    both = ConcatSources([vimeo, FrameFolderClips(tmp_path / "frames", length=5)])
    assert isinstance(both, TimedClipSource)
    assert [both.span(i) for i in range(len(both))] == [7, 9, 9, 9, 9, 9]
    assert both.frames_at(5, (0, 8), None)[:, 0, 0, 0].tolist() == [0, 8]


# --- synthetic motion at fractional times ---------------------------------------------


def smooth_photo(seed: int, h: int = 160, w: int = 200) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def test_synthetic_frames_at_integer_positions_are_the_clip() -> None:
    src = SyntheticMotion([smooth_photo(0), smooth_photo(1)], size=4, frame_size=(48, 48))
    assert src.span(0) is None
    for seed in range(3):
        clip = src.clip(1, np.random.default_rng(seed))
        fine = src.frames_at(1, range(25), np.random.default_rng(seed))  # N = 4 per 2 frames
        np.testing.assert_array_equal(fine[::4], clip)
        assert not np.array_equal(fine[1], fine[0]) and not np.array_equal(fine[1], fine[4])


def test_synthetic_in_betweens_are_exact_renders() -> None:
    """Positions j/N of each step render the motion there: the same scene over a clip twice
    as long at half the speeds gives the same frames (a linear motion without zoom, whose
    view placement does not depend on the frames rendered)."""
    fast = MotionConfig(max_speed=6.0, max_accel=0.0, max_rotation=2.0, max_zoom=0.0,
                        occluders=2, occluder_speed=8.0)  # fmt: skip
    slow = MotionConfig(max_speed=3.0, max_accel=0.0, max_rotation=1.0, max_zoom=0.0,
                        occluders=2, occluder_speed=4.0)  # fmt: skip
    photos = [smooth_photo(2), smooth_photo(3)]
    coarse = SyntheticMotion(photos, frame_size=(48, 48), length=7, motion=fast)
    fine = SyntheticMotion(photos, frame_size=(48, 48), length=13, motion=slow)
    for seed in range(3):
        a = coarse.frames_at(0, range(13), np.random.default_rng(seed)).astype(int)
        b = fine.clip(0, np.random.default_rng(seed)).astype(int)
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01


# --- the default stays what it was ----------------------------------------------------

# sha256 (first 16 hex digits) of the (lr, hr) bytes of these keys, made by the code before
# time factors existed (main at 6e1f876): the default path must not change a bit.
GOLDEN = {
    "plain": ["405abb5992aa5de8", "65e649f75d001843", "d168eac39e0ec4c1"],
    "degraded": ["382908500d13e64c", "82f96ae66a531303", "aea4a7b20539adf0"],
}


def golden_pairs(root: Path) -> dict[str, TrainingPairs]:
    rng = np.random.default_rng(0)
    for c, n in enumerate((9, 12)):
        for i in range(n):
            path = root / f"c{c}" / f"{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)).save(path)
    src = FrameFolderClips(root)
    augment = AugmentConfig(lr_patch=4)
    noisy = DegradeConfig(noise_sigma=0.02, jpeg_quality=(40, 60))
    return {
        "plain": TrainingPairs(src, augment=augment),
        "degraded": TrainingPairs(src, augment=augment, degrade=noisy, static_prob=0.5),
    }


def sample_hash(sample: tuple[torch.Tensor, ...]) -> str:
    digest = hashlib.sha256()
    for t in sample:
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def test_default_samples_are_unchanged(tmp_path: Path) -> None:
    for name, pairs in golden_pairs(tmp_path).items():
        keys = [(0, 1), (3, 5), (len(pairs) - 1, 9)]
        assert [sample_hash(pairs[k]) for k in keys] == GOLDEN[name], name


def test_default_config_builds_samples_without_times(tmp_path: Path) -> None:
    write_frames(tmp_path / "frames", [9, 30])
    train = [{"kind": "frames", "path": "frames"}]
    base = {"root": str(tmp_path), "lr_patch": 4, "train": train}
    plain = build_training_set(TrainConfig.from_dict({"data": base}).data)
    assert plain.times is None and plain.source.length == 7 and len(plain[(0, 0)]) == 2
    timed_data = TrainConfig.from_dict({"data": {**base, "time_factors": [2, 8]}}).data
    timed = build_training_set(timed_data)
    assert timed.times is not None and timed.source.length == 7  # the same windows
    assert len(timed) == len(plain)
    # The 9-frame clip only fits N = 2; the 30-frame one N = 8 as well.
    assert {check_targets(*timed[(0, s)])[0] for s in range(20)} == {2}
    assert {check_targets(*timed[(len(timed) - 1, s)])[0] for s in range(20)} == {2, 8}


def test_time_factor_config_errors(tmp_path: Path) -> None:
    write_frames(tmp_path / "frames", [9])
    base = {"root": str(tmp_path), "lr_patch": 4, "train": [{"kind": "frames", "path": "frames"}]}
    with pytest.raises(ConfigError, match=r"needs data\.time_factors"):
        TrainConfig.from_dict({"data": {**base, "time_factor_weights": [1.0]}})
    with pytest.raises(ConfigError, match="1 weights for 2 factors"):
        TrainConfig.from_dict(
            {"data": {**base, "time_factors": [2, 3], "time_factor_weights": [1]}}
        )
    with pytest.raises(ConfigError, match=r"integers >= 2"):
        TrainConfig.from_dict({"data": {**base, "time_factors": [1]}})
    # No clip of the source fits the smallest factor's span (3 * 4 + 1 = 13 > 9).
    data = TrainConfig.from_dict({"data": {**base, "time_factors": [4, 8]}}).data
    with pytest.raises(ConfigError, match=r"data.train\[0\].*at least 13 frames"):
        build_training_set(data)


# --- validation at x4 -----------------------------------------------------------------


def test_validation_at_x4_scores_every_quarter(tmp_path: Path) -> None:
    write_frames(tmp_path / "frames", [26])
    write_frames(tmp_path / "short", [9])  # too short for 13 frames: left out at x4
    Image.fromarray(smooth_photo(4)).save(tmp_path / "photo.png")
    synthetic = {"kind": "synthetic", "photos": ".", "size": 2, "max_speed": 3.0, "crop": 16}
    data = DataSection(
        root=str(tmp_path),
        val=[
            {"kind": "frames", "path": "frames", "windows": 2},
            {**synthetic, "windows": 2},
            {"kind": "frames", "path": "short"},
        ],
    )
    x2 = build_validation(data, seed=0)
    x4 = build_validation_at(data, seed=0, factor=4)
    assert len(x2) == 5 and len(x4) == 4
    for lr, hr, times in x4:
        assert lr.shape[0] == 4 and hr.shape[0] == 13
        assert times.tolist() == [[0.25, 0.5, 0.75]] * 3
    first, last = (values(hr) for _, hr, _ in x4[:2])
    assert first == list(range(13)) and last == list(range(13, 26))  # spread over 26 frames
    assert values(x4[0][0]) == [0, 4, 8, 12]
    # Synthetic: the x2 clip's motion, finer in time (its inputs are the x2 inputs).
    for (lr2, hr2), (lr4, hr4, _) in zip(x2[2:4], x4[2:], strict=True):
        assert torch.equal(lr2, lr4) and torch.equal(hr2, hr4[::2])
    with pytest.raises(ValueError, match="even factor"):
        build_validation_at(data, seed=0, factor=3)


def test_shipped_time_config() -> None:
    from zsm.models.config import PRESETS
    from zsm.training.config import load_config

    config = load_config(Path(__file__).parents[1] / "configs" / "zsm-compact-time.toml")
    assert config.model.zsm_config() == PRESETS["compact-time"]
    d = config.data
    assert d.time_factors == [2, 3, 4, 8] and sum(d.time_factor_weights or []) == 1.0
    assert config.train.init.endswith("zsm-compact-flow.safetensors")
    assert sum(config.schedule.periods) == config.train.iterations
