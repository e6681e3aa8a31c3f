"""``zsm demo`` end to end (tiny random weights, the first frames of the bundled clip)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from zsm.cli import main
from zsm.demo import demo_clip
from zsm.models import registry
from zsm.video.io import iter_frames, probe, read_image

pytestmark = pytest.mark.usefixtures("single_thread")


def test_bundled_clip() -> None:
    clip = demo_clip()
    assert clip.stat().st_size < 500_000
    info = probe(clip)
    assert (info.width, info.height) == (128, 72) and info.frame_count == 33
    assert 2.5 <= info.frame_count / info.fps <= 3.1
    assert [a.codec for a in info.audio] == ["aac"]


def test_demo_end_to_end(tmp_path, video_tiny_weights, video_audio_seconds, capsys) -> None:
    out = tmp_path / "zsm-demo"
    code = main(
        [
            "demo",
            "-o",
            str(out),
            "--weights",
            str(video_tiny_weights),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--frames",
            "4",
        ]
    )
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    names = {"input.mp4", "zsm.mp4", "side_by_side.mp4", "contact_sheet.png"}
    assert {p.name for p in out.iterdir()} == names
    for name in names:
        assert str(out / name) in stdout

    assert probe(out / "input.mp4").frame_count == 33
    result = probe(out / "zsm.mp4")
    assert (result.width, result.height, result.fps) == (512, 288, 25)
    assert len(list(iter_frames(result))) == 8
    assert abs(video_audio_seconds(out / "zsm.mp4") - 4 / 12.5) <= 1 / 12.5

    side = probe(out / "side_by_side.mp4")
    assert (side.width, side.height, side.fps) == (2 * 512 + 4, 288, 25)
    assert len(list(iter_frames(side))) == 8 and len(side.audio) == 1

    sheet = read_image(out / "contact_sheet.png")
    assert sheet.shape[1] == 3 * 512 and sheet.shape[0] % 288 == 0


def test_demo_without_bundled_weights(tmp_path, monkeypatch, capsys) -> None:
    entry = registry.registered_weights()[registry.DEFAULT_WEIGHTS]
    missing = dataclasses.replace(entry, filename="not-installed.safetensors")
    monkeypatch.setitem(registry._REGISTRY, registry.DEFAULT_WEIGHTS, missing)
    code = main(["demo", "-o", str(tmp_path / "d"), "--device", "cpu"])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and "bundled weights" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_demo_errors_leave_nothing(tmp_path, capsys) -> None:
    cases = [["--weights", str(tmp_path / "none.safetensors")]]
    if not torch.cuda.is_available():
        cases.append(["--device", "cuda"])
    for extra in cases:
        code = main(["demo", "-o", str(tmp_path / "d"), *extra])
        _, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1, err
        assert not (tmp_path / "d").exists()
