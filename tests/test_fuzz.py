"""Bounded fuzzing of the decode path (not in the default suite: ``pytest -m fuzz -s``).

Small valid clips in several containers are mutated (bytes flipped, runs overwritten,
cut short, chunks duplicated or dropped); each mutant goes through ``probe`` and a full
decode with ``iter_frames``, as ``zsm upscale`` reads its input. The only failure
allowed is our one-line :class:`~zsm.errors.InputError`; anything else (another
exception type, a frame of the wrong shape) fails the test. ``ZSM_FUZZ_SECONDS``
(default 60) bounds the time, ``ZSM_FUZZ_SEED`` picks the mutations.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from zsm.errors import InputError
from zsm.video.io import iter_frames, probe

pytestmark = pytest.mark.fuzz

SEEDS = [
    ("clip.mp4", "libx264", "yuv420p"),
    ("clip.mkv", "ffv1", "yuv444p"),
    ("clip.webm", "libvpx-vp9", "yuv420p"),
    ("clip.avi", "mpeg4", "yuv420p"),
    ("clip.mov", "png", "rgba"),
]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random mutation of ``data``."""
    buf = bytearray(data)
    kind = rng.integers(6)
    if kind == 0:  # flip a few bits
        for i in rng.integers(0, len(buf), size=int(rng.integers(1, 16))):
            buf[i] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # overwrite a run with random bytes
        start, size = int(rng.integers(len(buf))), int(rng.integers(1, 256))
        buf[start : start + size] = rng.bytes(min(size, len(buf) - start))
    elif kind == 2:  # cut short
        del buf[int(rng.integers(1, len(buf))) :]
    elif kind == 3:  # duplicate a chunk
        start, size = int(rng.integers(len(buf))), int(rng.integers(1, 2048))
        buf[start:start] = buf[start : start + size]
    elif kind == 4:  # drop a chunk
        start, size = int(rng.integers(len(buf))), int(rng.integers(1, 2048))
        del buf[start : start + size]
    else:  # set a byte to an extreme value (sizes and counts in headers)
        buf[int(rng.integers(len(buf)))] = int(rng.choice([0, 0x7F, 0x80, 0xFF]))
    return bytes(buf)


def test_mutated_videos_fail_cleanly(tmp_path: Path, video_make_clip) -> None:
    budget = float(os.environ.get("ZSM_FUZZ_SECONDS", "60"))
    rng = np.random.default_rng(int(os.environ.get("ZSM_FUZZ_SEED", "0")))
    seeds = [
        (name, video_make_clip(name, frames=4, codec=codec, pix_fmt=fmt).read_bytes())
        for name, codec, fmt in SEEDS
    ]
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        name, data = seeds[int(rng.integers(len(seeds)))]
        path = tmp_path / f"mutant{Path(name).suffix}"
        path.write_bytes(mutate(data, rng))
        try:
            info = probe(path)
            for frame in iter_frames(info):
                assert frame.shape == (info.height, info.width, 3) and frame.dtype == np.uint8
            outcomes["decoded"] += 1
        except InputError:
            outcomes["InputError"] += 1
    total = sum(outcomes.values())
    print(f"\nfuzz: {total} mutated inputs in {budget:.0f} s: {dict(outcomes)}")
    assert total > 0
