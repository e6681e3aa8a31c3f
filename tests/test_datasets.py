"""Clip sources (Vimeo-90K, Vid4-style folders, video files), augmentation and training pairs."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from zsm.data.augment import AugmentConfig, augment_clip, random_crop, random_flip_rotate
from zsm.data.concat import ConcatSources
from zsm.data.datasets import (
    FrameFolderClips,
    VideoFolderClips,
    VimeoSeptuplets,
)
from zsm.data.degrade import make_lr_clip
from zsm.data.pairs import DegradeConfig, TrainingPairs, clip_to_tensor
from zsm.errors import InputError


def frames_of(seed: int, n: int, h: int = 24, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def write_png(path: Path, frame: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path)


def make_vimeo(root: Path, names: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Vimeo-90K layout: sequences/<a>/<b>/im1..im7.png and sep_<split>list.txt."""
    clips = {}
    root.mkdir(parents=True, exist_ok=True)
    for split, seqs in names.items():
        (root / f"sep_{split}list.txt").write_text("\n".join(seqs) + "\n")
        for name in seqs:
            clips[name] = frames_of(100 + len(clips), 7)
            for i, frame in enumerate(clips[name], start=1):
                write_png(root / "sequences" / name / f"im{i}.png", frame)
    return clips


def write_video(path: Path, frames: np.ndarray, *, gop: int = 5) -> None:
    """Lossless H.264 (RGB) with B-frames and a key frame every ``gop`` frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.codec_context.gop_size = gop
        stream.options = {"qp": "0", "bf": "2", "preset": "ultrafast"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


# --- Vimeo-90K ------------------------------------------------------------------------


def test_vimeo_reads_septuplets_in_list_order(tmp_path: Path) -> None:
    clips = make_vimeo(tmp_path, {"train": ["00001/0001", "00001/0002"], "test": ["00002/0001"]})
    train = VimeoSeptuplets(tmp_path, split="train")
    test = VimeoSeptuplets(tmp_path, split="test")
    assert (len(train), len(test)) == (2, 1)
    np.testing.assert_array_equal(train.clip(1, None), clips["00001/0002"])
    np.testing.assert_array_equal(test.clip(0, None), clips["00002/0001"])
    assert train.clip(0, None).shape == (7, 24, 40, 3)
    with pytest.raises(IndexError):
        train.clip(2, None)


def test_vimeo_sub_windows_come_from_the_septuplet(tmp_path: Path) -> None:
    clips = make_vimeo(tmp_path, {"train": ["00001/0001"]})
    src = VimeoSeptuplets(tmp_path, length=5)
    full = clips["00001/0001"]
    np.testing.assert_array_equal(src.clip(0, None), full[:5])
    starts = set()
    for seed in range(20):
        window = src.clip(0, np.random.default_rng(seed))
        start = next(s for s in range(3) if np.array_equal(window, full[s : s + 5]))
        starts.add(start)
    assert starts == {0, 1, 2}


def test_vimeo_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"sep_trainlist\.txt not found"):
        VimeoSeptuplets(tmp_path)
    (tmp_path / "sep_trainlist.txt").write_text("00001/0001\n")
    with pytest.raises(InputError, match="frame not found"):
        VimeoSeptuplets(tmp_path)


# --- Vid4-style frame folders ---------------------------------------------------------


def test_frame_folders_window_every_clip_in_natural_order(tmp_path: Path) -> None:
    calendar = frames_of(1, 10)
    city = frames_of(2, 8)
    for i, f in enumerate(calendar):
        write_png(tmp_path / "calendar" / f"frame{i}.png", f)  # frame10 sorts after frame9
    for i, f in enumerate(city):
        write_png(tmp_path / "city" / f"{i:08d}.png", f)
    for i, f in enumerate(frames_of(3, 5)):
        write_png(tmp_path / "short" / f"{i}.png", f)  # fewer than 7 frames: skipped
    src = FrameFolderClips(tmp_path)
    assert src.clip_names == ["calendar", "city"]
    assert len(src) == (10 - 6) + (8 - 6)
    np.testing.assert_array_equal(src.clip(0, None), calendar[0:7])
    np.testing.assert_array_equal(src.clip(3, None), calendar[3:10])
    np.testing.assert_array_equal(src.clip(4, None), city[0:7])
    assert len(FrameFolderClips(tmp_path, stride=3)) == 2 + 1
    only_city = FrameFolderClips(tmp_path, clips=["city"])
    np.testing.assert_array_equal(only_city.clip(1, None), city[1:8])
    single = FrameFolderClips(tmp_path / "city")  # a folder of frames is one clip
    assert len(single) == 2


def test_frame_folders_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        FrameFolderClips(tmp_path / "missing")
    for i, f in enumerate(frames_of(3, 4)):
        write_png(tmp_path / "a" / f"{i}.png", f)
    with pytest.raises(InputError, match="no clip of at least 7 frames"):
        FrameFolderClips(tmp_path)
    with pytest.raises(InputError, match=r"clips \['b'\] not found"):
        FrameFolderClips(tmp_path, clips=["b"], length=3)


# --- folders of videos ----------------------------------------------------------------


def test_video_windows_decode_exact_frames_by_seeking(tmp_path: Path) -> None:
    a, b = frames_of(4, 20), frames_of(5, 9)
    write_video(tmp_path / "clips" / "a.mp4", a)
    write_video(tmp_path / "clips" / "sub" / "b.mkv", b)
    (tmp_path / "clips" / "notes.txt").write_text("not a video")
    src = VideoFolderClips(tmp_path / "clips", cache_mb=0)
    assert len(src) == (20 - 6) + (9 - 6)
    for i in range(14):  # windows starting inside GOPs, across key frames
        np.testing.assert_array_equal(src.clip(i, None), a[i : i + 7])
    np.testing.assert_array_equal(src.clip(14, None), b[0:7])
    np.testing.assert_array_equal(src.clip(16, None), b[2:9])


def test_video_frame_range_and_cache_agree(tmp_path: Path) -> None:
    a = frames_of(6, 20)
    write_video(tmp_path / "a.mp4", a)
    head = VideoFolderClips(tmp_path / "a.mp4", frames=(0, 12), cache_mb=0)
    tail = VideoFolderClips(tmp_path / "a.mp4", frames=(-8, None))
    assert (len(head), len(tail)) == (12 - 6, 8 - 6)
    np.testing.assert_array_equal(head.clip(5, None), a[5:12])
    np.testing.assert_array_equal(tail.clip(0, None), a[12:19])
    np.testing.assert_array_equal(tail.clip(1, None), a[13:20])
    assert tail._cache  # decoded once, kept
    cached = VideoFolderClips(tmp_path / "a.mp4", frames=(0, 12))
    for i in range(len(head)):
        np.testing.assert_array_equal(cached.clip(i, None), head.clip(i, None))


def test_video_hr_scale_halves_the_frames(tmp_path: Path) -> None:
    frames = np.repeat(np.linspace(0, 255, 48).astype(np.uint8)[None, None, :, None], 3, 3)
    frames = np.repeat(np.repeat(frames, 32, axis=1), 8, axis=0)  # (8, 32, 48, 3) ramps
    write_video(tmp_path / "ramp.mp4", frames)
    src = VideoFolderClips(tmp_path / "ramp.mp4", hr_scale=0.5, cache_mb=0)
    clip = src.clip(0, None)
    assert clip.shape == (7, 16, 24, 3)
    # Area averaging of a horizontal ramp: each output pixel is the mean of two neighbours.
    expect = frames[0, 0, :, 0].astype(float).reshape(-1, 2).mean(1)
    np.testing.assert_allclose(clip[0, 8, :, 0], expect, atol=2)


def test_video_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        VideoFolderClips(tmp_path / "missing.mp4")
    with pytest.raises(InputError, match="no video files"):
        VideoFolderClips(tmp_path)
    write_video(tmp_path / "short.mp4", frames_of(7, 4))
    with pytest.raises(InputError, match="no video of at least 7 frames"):
        VideoFolderClips(tmp_path)


def test_real_clip_windowed_decode_matches_sequential_decode() -> None:
    """The bundled demo clip (real H.264 from Big Buck Bunny): random windows decode to
    exactly the frames a sequential decode gives."""
    path = Path(__file__).parents[1] / "src" / "zsm" / "assets" / "bbb-demo.mp4"
    with av.open(str(path)) as c:
        seq = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(seq) == 33
    src = VideoFolderClips(path, frames=(0, 33), cache_mb=0)
    assert len(src) == 27
    for start in (20, 0, 13, 26):
        np.testing.assert_array_equal(src.clip(start, None), np.stack(seq[start : start + 7]))


def test_concat_sources_index_one_after_another(tmp_path: Path) -> None:
    clips = make_vimeo(tmp_path / "v", {"train": ["00001/0001", "00001/0002"]})
    for i, f in enumerate(frames_of(8, 8)):
        write_png(tmp_path / "f" / "c" / f"{i}.png", f)
    both = ConcatSources([VimeoSeptuplets(tmp_path / "v"), FrameFolderClips(tmp_path / "f")])
    assert len(both) == 4
    np.testing.assert_array_equal(both.clip(1, None), clips["00001/0002"])
    assert both.clip(3, None).shape == (7, 24, 40, 3)


# --- augmentation ---------------------------------------------------------------------


def test_random_crop_is_aligned_to_the_lr_grid() -> None:
    clip = frames_of(9, 7, 64, 80)
    rng = np.random.default_rng(0)
    for _ in range(20):
        crop = random_crop(clip, 32, rng)
        assert crop.shape == (7, 32, 32, 3)
        hits = [
            (t, left)
            for t in range(0, 64 - 31)
            for left in range(0, 80 - 31)
            if np.array_equal(clip[:, t : t + 32, left : left + 32], crop)
        ]
        assert len(hits) == 1 and hits[0][0] % 4 == 0 and hits[0][1] % 4 == 0
    with pytest.raises(InputError, match="smaller than the HR training patch"):
        random_crop(clip, 128, rng)


def test_flips_and_rotation_give_the_eight_symmetries() -> None:
    clip = frames_of(10, 2, 8, 8)
    seen = set()
    for seed in range(64):
        out = random_flip_rotate(clip, np.random.default_rng(seed))
        seen.add(out.tobytes())
    assert len(seen) == 8
    assert random_flip_rotate(clip, np.random.default_rng(1), flips=False, rotate=False) is clip


def test_augment_reverses_time_sometimes() -> None:
    clip = frames_of(11, 7, 32, 32)
    config = AugmentConfig(lr_patch=8, flips=False, rotate=False)
    orders = set()
    for seed in range(16):
        out = augment_clip(clip, np.random.default_rng(seed), config)
        orders.add("fwd" if np.array_equal(out, clip) else "rev")
        assert np.array_equal(out, clip) or np.array_equal(out, clip[::-1])
    assert orders == {"fwd", "rev"}


# --- training pairs -------------------------------------------------------------------


def test_pairs_are_degraded_with_the_shared_degradation(tmp_path: Path) -> None:
    make_vimeo(tmp_path, {"train": ["00001/0001"]})
    src = VimeoSeptuplets(tmp_path)
    pairs = TrainingPairs(src, augment=AugmentConfig(lr_patch=4))
    lr, hr = pairs[(0, 123)]
    assert lr.shape == (4, 3, 4, 4) and hr.shape == (7, 3, 16, 16)
    assert lr.dtype == hr.dtype == torch.float32
    torch.testing.assert_close(lr, make_lr_clip(hr)[0].float(), rtol=0, atol=0)
    # The same key gives the same sample; other seeds give other crops.
    lr2, hr2 = pairs[(0, 123)]
    assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    assert any(not torch.equal(hr, pairs[(0, s)][1]) for s in range(5))
    # The HR target is an exact crop of the stored frames (up to the augmentations).
    assert hr.mul(255).round().max() <= 255 and (hr * 255 - (hr * 255).round()).abs().max() < 1e-4


def test_pairs_optional_degradations_change_the_input_only(tmp_path: Path) -> None:
    make_vimeo(tmp_path, {"train": ["00001/0001"]})
    src = VimeoSeptuplets(tmp_path)
    plain = TrainingPairs(src, augment=AugmentConfig(lr_patch=4))
    noisy = TrainingPairs(
        src,
        augment=AugmentConfig(lr_patch=4),
        degrade=DegradeConfig(noise_sigma=0.05, jpeg_quality=(30, 60)),
    )
    lr_a, hr_a = plain[(0, 7)]
    lr_b, hr_b = noisy[(0, 7)]
    assert torch.equal(hr_a, hr_b)
    assert not torch.equal(lr_a, lr_b)
    assert torch.equal(noisy[(0, 7)][0], lr_b)  # still a pure function of the key


def test_static_clips_repeat_the_middle_frame(tmp_path: Path) -> None:
    make_vimeo(tmp_path, {"train": ["00001/0001"]})
    pairs = TrainingPairs(
        VimeoSeptuplets(tmp_path), augment=AugmentConfig(lr_patch=4), static_prob=1
    )
    _, hr = pairs[(0, 1)]
    assert all(torch.equal(hr[0], f) for f in hr)


def test_clip_to_tensor_layout() -> None:
    clip = frames_of(12, 2, 3, 5)
    t = clip_to_tensor(clip)
    assert t.shape == (2, 3, 3, 5)
    assert t[1, 2, 0, 4] == pytest.approx(clip[1, 0, 4, 2] / 255)
