"""`zsm evaluate`: clips found, every frame scored, report files written and well-formed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import zsm
import zsm.evaluation.model
import zsm.evaluation.prepare
import zsm.options
from zsm.cli import main
from zsm.data.degrade import make_lr_clip
from zsm.evaluation import (
    BASELINES,
    INTERPOLATED,
    MODEL_METHOD,
    RECONSTRUCTED,
    EvalOptions,
    evaluate,
    evaluate_clip,
    find_clips,
    prepare_clip,
    psnr_y,
    run_model_on_clip,
    ssim_y,
    write_report,
)
from zsm.models.descriptor import ModelDescriptor

T, H, W = 5, 48, 64


def moving_clip(t: int = T, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """uint8 (t, h, w, 3): a smooth random texture drifting right 2 px per frame."""
    rng = np.random.default_rng(seed)
    base = rng.random((h // 8 + 2, (w + 2 * t) // 8 + 2, 3))
    big = np.asarray(
        Image.fromarray((base * 255).astype(np.uint8)).resize(
            (base.shape[1] * 8, base.shape[0] * 8), Image.Resampling.BICUBIC
        )
    )
    return np.stack([big[:h, 2 * (t - i) : 2 * (t - i) + w] for i in range(t)])


def write_frames(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{i}.png")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny convolutions on a busy 2-core machine run far faster on one thread than on two.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model() -> zsm.ZoomingSlowMo:
    torch.manual_seed(0)
    config = zsm.ZSMConfig(nf=8, groups=2, front_RBs=1, back_RBs=1, hr_nf=8, global_skip=True)
    return zsm.ZoomingSlowMo(config).eval()


@pytest.fixture
def vid4_like(tmp_path: Path) -> Path:
    root = tmp_path / "vid4"
    write_frames(root / "calendar", moving_clip(seed=1))
    write_frames(root / "city", moving_clip(seed=2))
    return root


def test_clips_are_found_in_every_layout(tmp_path: Path, vid4_like: Path) -> None:
    assert [c.name for c in find_clips(vid4_like)] == ["calendar", "city"]
    (clip,) = find_clips(vid4_like / "city")
    assert clip.load(None).shape == (T, H, W, 3)
    assert clip.load(3).shape == (3, H, W, 3)

    seq = tmp_path / "vimeo" / "sequences" / "00001" / "0001"
    write_frames(seq, moving_clip(7))
    for i in range(7):
        (seq / f"frame{i}.png").rename(seq / f"im{i + 1}.png")
    (tmp_path / "vimeo" / "sep_testlist.txt").write_text("00001/0001\n")
    (clip,) = find_clips(tmp_path / "vimeo" / "sep_testlist.txt")
    assert clip.name == "00001/0001" and clip.load(None).shape == (7, H, W, 3)

    video = tmp_path / "clip.mkv"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "bgr0"  # lossless RGB
        for frame in moving_clip(6):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    (clip,) = find_clips(video)
    frames = clip.load(None)
    np.testing.assert_array_equal(frames, moving_clip(6))
    assert clip.load(4).shape[0] == 4

    with pytest.raises(zsm.InputError, match="not found"):
        find_clips(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(zsm.InputError, match="no frames"):
        find_clips(tmp_path / "empty")


def test_prepare_clip_crops_to_multiples_of_4_and_odd_length() -> None:
    hr = moving_clip(6, 50, 66)
    prep = prepare_clip(iter(hr))
    assert (prep.count, prep.height, prep.width) == (5, 48, 64)
    assert len(prep.notes) == 2
    np.testing.assert_array_equal(prep.lr, make_lr_clip(hr[:5, :48, :64])[0])
    np.testing.assert_array_equal(np.stack(list(prep.targets(lambda: ()))), hr[:5, :48, :64])
    with pytest.raises(zsm.InputError, match="at least 3"):
        prepare_clip(iter(moving_clip(2)))
    with pytest.raises(zsm.InputError, match="too small"):
        prepare_clip(iter(moving_clip(3, 3, 8)))
    with pytest.raises(zsm.InputError, match="first frame is 64x48"):
        prepare_clip(iter([*moving_clip(2), moving_clip(1, 40, 64)[0]]))


def test_clips_too_large_to_keep_are_read_twice(vid4_like: Path, monkeypatch) -> None:
    """Only the LR input stays in memory; the targets are read again, frame by frame."""
    (clip,) = find_clips(vid4_like / "city")
    prep = prepare_clip(clip.frames(None), keep_bytes=0)
    assert prep.frames is None and prep.count == T
    methods = {"bicubic-flow": BASELINES["bicubic-flow"]}
    options = EvalOptions(progress=False)
    kept = evaluate_clip("city", clip.load(), methods, options)
    reads = []

    def read():
        reads.append(1)
        return clip.frames(None)

    monkeypatch.setattr(zsm.evaluation.prepare, "KEEP_FRAMES_BYTES", 0)
    streamed = evaluate_clip("city", read, methods, options)
    assert len(reads) == 2
    assert streamed.scores["bicubic-flow"].psnr == kept.scores["bicubic-flow"].psnr
    # A clip that changes between the two readings is an error, not a silent mismatch.
    readings = iter([clip.frames(None), clip.frames(3)])
    with pytest.raises(zsm.InputError, match="second reading"):
        evaluate_clip("city", lambda: next(readings), methods, options)


def test_run_model_on_clip_gives_2n_minus_1_uint8_frames(tiny_model) -> None:
    lr, _ = make_lr_clip(moving_clip())
    out = run_model_on_clip(tiny_model, lr)
    assert len(out) == 2 * len(lr) - 1 == T
    assert all(f.dtype == np.uint8 and f.shape == (H, W, 3) for f in out)
    x = torch.from_numpy(lr).permute(0, 3, 1, 2)[None].float() / 255
    with torch.no_grad():
        expected = (tiny_model(x)[0].clamp(0, 1) * 255).permute(0, 2, 3, 1).numpy()
    for frame, exact in zip(out, expected, strict=True):
        assert np.abs(frame.astype(float) - exact).max() <= 0.5 + 1e-3


def test_clips_longer_than_a_window_keep_every_frame(tiny_model) -> None:
    lr, _ = make_lr_clip(moving_clip(29, 16, 24))  # 15 inputs: more than one window
    out = run_model_on_clip(tiny_model, lr)
    assert len(out) == 29 and all(f.shape == (16, 24, 3) for f in out)


def test_evaluate_scores_every_frame(vid4_like: Path, tiny_model) -> None:
    options = EvalOptions(progress=False)
    result = evaluate(vid4_like, model=tiny_model, weights="tiny", options=options)
    assert result.methods == [*BASELINES, MODEL_METHOD]
    assert [c.name for c in result.clips] == ["calendar", "city"]
    clip = result.clips[0]
    assert clip.kinds == [RECONSTRUCTED, INTERPOLATED] * 2 + [RECONSTRUCTED]
    # The stored scores are the metrics of the method's own output against the HR frames.
    hr = find_clips(vid4_like)[0].load(None)
    lr, gt = make_lr_clip(hr)
    flow = list(BASELINES["bicubic-flow"](lr))
    s = clip.scores["bicubic-flow"]
    assert s.psnr == pytest.approx([psnr_y(f, g) for f, g in zip(flow, gt, strict=True)])
    assert s.ssim == pytest.approx([ssim_y(f, g) for f, g in zip(flow, gt, strict=True)])
    assert s.mean(clip.kinds, INTERPOLATED)["psnr"] == pytest.approx(np.mean(s.psnr[1::2]))
    assert all(x.seconds > 0 for x in clip.scores.values())
    summary = result.summary()
    expected = np.mean(
        [c.scores["bicubic-blend"].mean(c.kinds, "all")["psnr"] for c in result.clips]
    )
    assert summary["bicubic-blend"]["all"]["psnr"] == pytest.approx(expected)
    assert summary[MODEL_METHOD]["frames"] == 2 * T
    # Crop examples: where the model gains most and least over the best baseline.
    labels = [c.label for c in clip.crops]
    assert labels == ["most gain", "least gain"]
    assert clip.crops[0].gain_db >= clip.crops[1].gain_db
    assert set(clip.crops[0].tiles) == {"GT", "bicubic-blend", "bicubic-flow", MODEL_METHOD} | {
        c.reference for c in clip.crops
    }


def test_report_files_are_written_and_well_formed(vid4_like: Path, tiny_model, tmp_path) -> None:
    result = evaluate(
        vid4_like,
        model=tiny_model,
        weights="tiny",
        options=EvalOptions(progress=False, crop_border=2),
    )
    out = tmp_path / "report"
    written = write_report(result, out)
    assert {p.name for p in written} >= {"report.json", "report.md"}

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    report = json.loads((out / "report.json").read_text(), parse_constant=no_constants)
    assert report["methods"] == [*BASELINES, MODEL_METHOD]
    assert report["protocol"]["border_crop"] == "2 px on every side"
    assert "not per 7-frame window" in report["protocol"]["scoring"]
    for method in report["methods"]:
        entry = report["summary"][method]
        assert set(entry) >= {"all", RECONSTRUCTED, INTERPOLATED, "fps"}
        assert 0 < entry["all"]["ssim"] <= 1 and math.isfinite(entry["all"]["psnr"])
    clip = report["clips"][0]
    assert clip["frames"] == T and len(clip["methods"]["zsm"]["per_frame"]["psnr"]) == T
    assert [c["label"] for c in clip["crops"]] == ["most gain", "least gain"]
    for name in report["plots"]:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 100

    md = (out / "report.md").read_text()
    assert "| clip | method | PSNR all | SSIM all |" in md
    assert "| calendar | zsm |" in md and "| **average** | bicubic-flow |" in md
    assert "not per 7-frame window" in md and "2 px on every side" in md
    for name in report["plots"]:
        assert f"]({name})" in md


def test_border_crop_default_is_none_and_said(vid4_like: Path, tmp_path: Path) -> None:
    result = evaluate(
        vid4_like / "city", baselines=["bicubic-repeat"], options=EvalOptions(progress=False)
    )
    write_report(result, tmp_path / "r")
    assert "none (0 px)" in (tmp_path / "r" / "report.md").read_text()
    assert result.clips[0].crops == []  # no flow baseline, no model: nothing to compare


def test_cli_baselines_only(vid4_like: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(["evaluate", str(vid4_like), "--baselines-only", "-o", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == list(BASELINES) and report["weights"] is None
    assert "bicubic-flow" in capsys.readouterr().out
    # The flow baseline is then the subject of the crop grid.
    assert any(p.startswith("crops-") for p in report["plots"])


def test_cli_with_weights_and_max_frames(vid4_like: Path, tiny_model, tmp_path: Path) -> None:
    weights = tmp_path / "tiny.safetensors"
    zsm.save_weights(tiny_model, weights)
    out = tmp_path / "cli"
    argv = ["evaluate", str(vid4_like / "city"), "--weights", str(weights)]
    argv += ["--baselines", "bicubic-blend", "--max-frames", "3", "-o", str(out), "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == ["bicubic-blend", MODEL_METHOD]
    assert report["clips"][0]["frames"] == 3
    assert report["protocol"]["ensemble"] == "none (one pass of the model)"
    # --ensemble: the same frames scored, the model averaged over 4 passes, and said so.
    assert main([*argv, "--ensemble", "4"]) == 0
    four = json.loads((out / "report.json").read_text())
    assert "averaged over 4 transformed passes" in four["protocol"]["ensemble"]
    assert "4 transformed passes" in (out / "report.md").read_text()
    scores = [r["clips"][0]["methods"][MODEL_METHOD]["per_frame"]["psnr"] for r in (report, four)]
    assert len(scores[1]) == 3 and scores[0] != scores[1]


def test_cli_errors_are_one_line(vid4_like: Path, tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "nope"), "--baselines-only"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", str(vid4_like), "--baselines", "magic", "--weights", "none"]) == 2
    assert "magic" in capsys.readouterr().err
    missing = str(tmp_path / "missing.safetensors")
    assert main(["evaluate", str(vid4_like), "--weights", missing]) == 2
    assert "--baselines-only" in capsys.readouterr().err
    out = tmp_path / "report"
    argv = ["evaluate", str(vid4_like), "--baselines-only", "--crop-border", "19"]
    assert main([*argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"calendar's {W}x{H} frames less a border crop of 19 are too small to score" in err
    assert not out.exists()


# --- --time-factor N ----------------------------------------------------------------------------

QUARTERS = ["t=1/4", "t=1/2", "t=3/4"]


@pytest.fixture
def nine_frames(tmp_path: Path) -> Path:
    """One clip of 9 HR frames: at time factor 4, inputs 0, 4 and 8."""
    folder = tmp_path / "nine"
    write_frames(folder, moving_clip(9, seed=3))
    return folder


def test_prepare_clip_keeps_every_nth_frame() -> None:
    hr = moving_clip(11)
    prep = prepare_clip(iter(hr), time_factor=4)
    assert prep.count == 9 and len(prep.lr) == 3
    np.testing.assert_array_equal(prep.lr, make_lr_clip(hr[[0, 1, 4, 5, 8]])[0])
    assert prep.notes == [
        "dropped the last 2 of 11 frames (no input follows them to interpolate from)"
    ]
    with pytest.raises(zsm.InputError, match="at least 5 frames"):
        prepare_clip(iter(moving_clip(4)), time_factor=4)
    with pytest.raises(ValueError, match="integer >= 2"):
        EvalOptions(time_factor=1)
    with pytest.raises(ValueError, match="max_frames must be >= 5"):
        EvalOptions(time_factor=4, max_frames=4)


def test_time_factor_4_scores_every_frame_and_each_time_step(
    nine_frames: Path, tiny_model, tmp_path: Path, caplog
) -> None:
    options = EvalOptions(progress=False, time_factor=4)
    with caplog.at_level("WARNING", logger="zsm"):
        result = evaluate(nine_frames, model=tiny_model, weights="tiny", options=options)
    # Today's networks make only t = 1/2: the model is skipped, in one line, and said so.
    assert result.methods == list(BASELINES) and list(result.skipped) == [MODEL_METHOD]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert (
        "skipping the model" in warning and "time_steps" in warning and "1/4, 1/2, 3/4" in warning
    )
    (clip,) = result.clips
    assert clip.kinds == ([RECONSTRUCTED] + [INTERPOLATED] * 3) * 2 + [RECONSTRUCTED]
    assert clip.times == ["t=0", *QUARTERS] * 2 + ["t=0"]
    hr = find_clips(nine_frames)[0].load(None)
    lr = make_lr_clip(hr[::2])[0]  # HR frames 0, 4, 8 (make_lr_clip keeps every other)
    for name in BASELINES:
        frames = list(BASELINES[name](lr, time_factor=4))
        s = clip.scores[name]
        assert s.psnr == pytest.approx([psnr_y(f, g) for f, g in zip(frames, hr, strict=True)])
        means = clip.time_means(name)
        assert list(means) == QUARTERS
        for j, label in enumerate(QUARTERS, start=1):
            assert means[label]["psnr"] == pytest.approx(np.mean([s.psnr[j], s.psnr[4 + j]]))
        assert result.summary()[name]["times"]["t=1/2"]["psnr"] == means["t=1/2"]["psnr"]
    # Flow follows the drift at every step; blending is worst halfway.
    flow, blend = clip.time_means("bicubic-flow"), clip.time_means("bicubic-blend")
    assert all(flow[t]["psnr"] > blend[t]["psnr"] for t in QUARTERS)
    assert blend["t=1/2"]["psnr"] < min(blend["t=1/4"]["psnr"], blend["t=3/4"]["psnr"])

    write_report(result, tmp_path / "r")
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["time_factor"] == 4 and MODEL_METHOD in report["skipped"]
    assert list(report["summary"]["bicubic-flow"]["times"]) == QUARTERS
    assert list(report["clips"][0]["methods"]["bicubic-flow"]["times"]) == QUARTERS
    assert len(report["clips"][0]["methods"]["bicubic-flow"]["per_frame"]["psnr"]) == 9
    assert "every 4th HR frame" in report["protocol"]["degradation"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| clip | method | PSNR t=1/4 | SSIM t=1/4 | PSNR t=1/2 |" in md
    assert "| **average** | bicubic-flow |" in md and "zsm not scored" in md


class _AnyTimeModel(torch.nn.Module):
    """A stand-in for a future network that makes any time step."""

    descriptor = ModelDescriptor(
        scale=4, size_multiple=4, bytes_per_pixel_frame=1.0, time_steps=True
    )


def test_a_model_with_time_steps_plugs_in(nine_frames: Path, monkeypatch) -> None:
    """The seam: such a model is asked through the pipeline for time factor N's frames
    (N per input, the last held), here faked by the blend baseline."""
    model = _AnyTimeModel()
    assert zsm.evaluation.time_step_problem(model, 4) is None  # the pipeline makes any N
    asked = []

    def pipeline(lr, *, model, time_factor, **_):
        asked.append(time_factor)
        frames = list(BASELINES["bicubic-blend"](lr, time_factor=time_factor))
        return iter(frames + [frames[-1]] * (time_factor - 1))

    monkeypatch.setattr(zsm.evaluation.model, "upscale_frames", pipeline)
    options = EvalOptions(progress=False, time_factor=4)
    result = evaluate(nine_frames, model=model, baselines=["bicubic-blend"], options=options)
    assert asked == [4] and result.methods == ["bicubic-blend", MODEL_METHOD]
    scores = result.clips[0].scores
    assert len(scores[MODEL_METHOD].psnr) == 9
    assert scores[MODEL_METHOD].psnr == scores["bicubic-blend"].psnr


def test_cli_time_factor(nine_frames: Path, tiny_model, tmp_path: Path, capsys, caplog) -> None:
    weights = tmp_path / "tiny.safetensors"
    zsm.save_weights(tiny_model, weights)
    out = tmp_path / "cli"
    base = ["evaluate", str(nine_frames), "-o", str(out), "--no-progress", "--time-factor", "4"]
    with caplog.at_level("WARNING", logger="zsm"):
        assert main([*base, "--weights", str(weights), "--baselines", "bicubic-blend"]) == 0
    assert len([r for r in caplog.records if "skipping the model" in r.getMessage()]) == 1
    text = capsys.readouterr().out
    assert "t=1/4" in text and "t=3/4" in text and "bicubic-blend" in text
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == ["bicubic-blend"] and report["time_factor"] == 4
    # Model only, at a time step it cannot make: a one-line error.
    assert main([*base, "--weights", str(weights), "--baselines", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "time_steps is False" in err
    assert main([*base[:-1], "1", "--baselines-only"]) == 2
    assert "--time-factor must be an integer >= 2" in capsys.readouterr().err
    assert main([*base, "--baselines-only", "--max-frames", "4"]) == 2
    assert "--max-frames must be >= 5" in capsys.readouterr().err


def test_cli_time_factor_defaults_to_the_time_step_weights(
    nine_frames: Path, tmp_path: Path, capsys
) -> None:
    """Without --weights, --time-factor 4 scores the bundled time-step weights (the x2
    default makes only t = 1/2 and would be skipped)."""
    out = tmp_path / "cli"
    args = ["evaluate", str(nine_frames), "-o", str(out), "--no-progress", "--time-factor", "4"]
    assert main([*args, "--baselines", "none"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "zsm-compact-time" in report["weights"] and report["methods"] == [MODEL_METHOD]
    assert list(report["summary"][MODEL_METHOD]["times"]) == QUARTERS
    capsys.readouterr()
