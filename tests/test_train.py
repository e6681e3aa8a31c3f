"""Training: configs, data order, schedule, checkpoints, exact resume, overfitting, DDP on gloo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import zsm
from zsm.cli import main as cli_main
from zsm.data.synthetic import MotionConfig, SyntheticMotion
from zsm.errors import ZSMError
from zsm.training import ConfigError, TrainConfig, Trainer, charbonnier, load_config, train
from zsm.training.checkpoint import latest_checkpoint, load_checkpoint
from zsm.training.config import apply_override
from zsm.training.dist import Dist
from zsm.training.logs import read_log
from zsm.training.sampler import DataOrder, RankBatches
from zsm.training.schedule import cosine_restart_factor

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {
    "preset": "compact",
    "nf": 8,
    "groups": 2,
    "front_RBs": 1,
    "back_RBs": 1,
    "hr_nf": 8,
    "global_skip": False,
}


def smooth_photo(seed: int, h: int = 96, w: int = 96, blob: int = 8) -> np.ndarray:
    """Random colour blobs of about ``blob`` pixels."""
    small = np.random.default_rng(seed).integers(0, 256, (h // blob, w // blob, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def make_vimeo(root: Path, *, train: int = 3, test: int = 1, size: int = 32, blob: int = 8) -> Path:
    """A Vimeo-90K-layout folder of septuplets with real (synthetic) motion, HR size x size."""
    motion = MotionConfig(max_speed=2.0, max_rotation=0.5, max_zoom=0.0, occluders=1)
    photos = [smooth_photo(0, blob=blob), smooth_photo(1, blob=blob)]
    src = SyntheticMotion(photos, frame_size=(size, size), motion=motion)
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for k in range(train + test):
        name = f"{k // 2 + 1:05d}/{k % 2 + 1:04d}"
        lists["train" if k < train else "test"].append(name)
        clip = src.clip(k, np.random.default_rng(k))
        for i, frame in enumerate(clip, start=1):
            path = root / "sequences" / name / f"im{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(path)
    for split, names in lists.items():
        (root / f"sep_{split}list.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="module")
def vimeo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vimeo(tmp_path_factory.mktemp("vimeo"))


def tiny_dict(vimeo: Path, out: Path, **train: Any) -> dict[str, Any]:
    return {
        "name": "tiny",
        "model": dict(TINY_MODEL),
        "data": {
            "root": str(vimeo),
            "batch_size": 2,
            "lr_patch": 4,
            "train": [{"kind": "vimeo", "path": "."}],
            "val": {"kind": "vimeo", "path": ".", "split": "test", "windows": 1},
        },
        "optim": {"lr": 1e-3},
        "schedule": {"periods": [4, 4], "restart_weights": [1.0, 0.5], "eta_min": 1e-6},
        "train": {
            "iterations": 6,
            "checkpoint_every": 100,
            "log_every": 1,
            "val_every": 3,
            "out_dir": str(out),
            "progress": False,
            "tensorboard": False,
            "ema_decay": 0.9,
            "grad_clip": 0.5,
            # One thread: tiny ops would spend their time in OpenMP barriers, badly so
            # when other processes share the cores.
            "threads": 1,
            **train,
        },
    }


def tiny(vimeo: Path, out: Path, **train: Any) -> TrainConfig:
    return TrainConfig.from_dict(tiny_dict(vimeo, out, **train))


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(e["iter"], e["loss"]) for e in read_log(run_dir) if "loss" in e]


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- config ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["official-vimeo", "compact-cpu"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = load_config(REPO / "configs" / f"{name}.toml")
    assert config.name == name
    assert config.data.train
    if name == "official-vimeo":
        c = config.model.zsm_config()
        assert (c.nf, c.back_RBs, config.data.batch_size, config.data.lr_patch) == (64, 40, 24, 32)
        assert config.optim.lr == 4e-4 and config.optim.betas == [0.9, 0.99]
        assert config.train.loss_eps == 1e-3
        assert sum(config.schedule.periods) == config.train.iterations == 600000
    else:
        assert config.model.zsm_config() == zsm.PRESETS["compact"]


def test_overrides_and_errors(tmp_path: Path) -> None:
    config = load_config(
        REPO / "configs" / "compact-cpu.toml",
        ["train.iterations=5", "optim.betas=[0.8, 0.9]", "model.nf=16", "train.out_dir=x/y"],
    )
    assert config.train.iterations == 5 and config.optim.betas == [0.8, 0.9]
    assert config.model.zsm_config().nf == 16 and str(config.out_dir) == "x/y"
    data: dict[str, Any] = {"data": {"train": [{"kind": "vimeo", "path": "a"}]}}
    apply_override(data, "data.train.0.path=b")
    apply_override(data, "data.val.kind=videos")
    assert data["data"]["train"][0]["path"] == "b" and data["data"]["val"] == {"kind": "videos"}
    for bad in ("data.train.3.path=c", "data.train.0.path.x=1", "data.train.x=1"):
        with pytest.raises(ConfigError, match=r"no list item|is not a table"):
            apply_override(data, bad)
    with pytest.raises(ConfigError, match="unknown keys in \\[train\\]"):
        load_config(REPO / "configs" / "compact-cpu.toml", ["train.iterationz=5"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(REPO / "configs" / "compact-cpu.toml", ["train.iterations"])
    with pytest.raises(ConfigError, match="config not found"):
        load_config(tmp_path / "nothing.toml")
    with pytest.raises(ConfigError, match="lists no training source"):
        TrainConfig.from_dict({})


@pytest.mark.parametrize(
    "override,message",
    [
        ('optim.lr="fast"', "optim.lr must be a number, got 'fast'"),
        ("train.iterations=[", "train.iterations must be an integer, got '['"),  # not TOML
        ("train.iterations=1.5", "train.iterations must be an integer, got 1.5"),
        ("data.flips=1", "data.flips must be a boolean (true/false), got 1"),
        ('optim.betas=["a", 1]', "optim.betas must be a list of numbers"),
        ('model.nf="8"', "model.nf must be an integer or none, got '8'"),
        ("data.val=3", "data.val must be a table or a list of tables or none, got 3"),
    ],
)
def test_values_of_the_wrong_type_are_named(override: str, message: str) -> None:
    """A config error, before anything compares or builds with them (no TypeError)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(REPO / "configs" / "compact-cpu.toml", [override])


def test_run_folder_that_cannot_be_made_is_one_line(vimeo: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").write_text("a file")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(_to_toml(tiny_dict(vimeo, tmp_path / "run", iterations=1)))
    assert cli_main(["train", str(cfg), "--run-dir", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    taken = tmp_path / "taken"
    assert err == f"zsm: error: cannot make folder {taken}: a file of that name is in the way\n"
    assert (tmp_path / "taken").read_text() == "a file" and not (tmp_path / "run").exists()


def test_yaml_configs_read_like_toml(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": [{"kind": "vimeo", "path": "v"}]}}))
    config = load_config(path, ["data.batch_size=3"])
    assert config.name == "run" and config.data.batch_size == 3


# --- pieces ---------------------------------------------------------------------------


def test_charbonnier() -> None:
    x = torch.zeros(2, 3)
    assert charbonnier(x, x, 1e-3).item() == pytest.approx(1e-3)
    y = torch.tensor([[3.0, -4.0]])
    expected = (np.sqrt(9 + 1e-6) + np.sqrt(16 + 1e-6)) / 2
    assert charbonnier(y, torch.zeros(1, 2)).item() == pytest.approx(expected)


def test_cosine_restarts() -> None:
    kw = {"periods": [10, 10], "restart_weights": [1.0, 0.5], "eta_min_ratio": 0.01}
    assert cosine_restart_factor(0, **kw) == pytest.approx(1.0)
    assert cosine_restart_factor(5, **kw) == pytest.approx((1 + 0.01) / 2)
    assert cosine_restart_factor(10, **kw) == pytest.approx(0.5)  # restart at weight 0.5
    assert cosine_restart_factor(15, **kw) == pytest.approx((0.5 + 0.01) / 2)
    assert cosine_restart_factor(20, **kw) == pytest.approx(0.01)
    assert cosine_restart_factor(0, warmup=4, **kw) == pytest.approx(0.25)


def test_data_order_does_not_depend_on_the_number_of_processes() -> None:
    order = DataOrder(5, seed=3)
    one = RankBatches(order, global_batch=4, rank=0, world_size=1, start=0, stop=6, first_sample=0)
    per_rank = [
        list(
            RankBatches(
                order, global_batch=4, rank=r, world_size=2, start=0, stop=6, first_sample=0
            )
        )
        for r in range(2)
    ]
    for it, batch in enumerate(one):
        assert batch == per_rank[0][it] + per_rank[1][it]
    stream = [key for batch in one for key in batch]
    for epoch in range(4):  # each epoch visits every clip once, in a new order
        assert sorted(k[0] for k in stream[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert len({k[1] for k in stream}) == len(stream)  # fresh augmentation seed per sample
    later = RankBatches(
        order, global_batch=4, rank=0, world_size=1, start=2, stop=6, first_sample=8
    )
    assert list(later) == list(one)[2:]


# --- training runs --------------------------------------------------------------------


def test_resume_continues_exactly(vimeo: Path, tmp_path: Path) -> None:
    """6 iterations straight == 3, checkpoint, resume, 3 more: same losses, same weights."""
    straight = train(tiny(vimeo, tmp_path / "a"))
    assert straight.stopped is None and straight.iteration == 6 and straight.weights

    config = tiny(vimeo, tmp_path / "b", checkpoint_every=2)
    first = train(config, stop_after=3)
    assert (first.stopped, first.iteration) == ("stop_after", 3)
    assert first.checkpoint is not None and first.checkpoint.name == "iter_00000003"
    # Resuming with data-loader workers must not change the data either.
    with_workers = tiny_dict(vimeo, tmp_path / "b", checkpoint_every=2)
    with_workers["data"]["workers"] = 2
    resumed = train(TrainConfig.from_dict(with_workers), resume=True)
    assert resumed.stopped is None and resumed.iteration == 6

    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert [i for i, _ in losses(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]
    val_a = [e for e in read_log(tmp_path / "a") if "val_psnr_y" in e]
    val_b = [e for e in read_log(tmp_path / "b") if "val_psnr_y" in e]
    assert [(e["iter"], e["val_psnr_y"], e["val_psnr_y_ema"]) for e in val_a] == [
        (e["iter"], e["val_psnr_y"], e["val_psnr_y_ema"]) for e in val_b
    ]
    assert_same_tensors(
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    ck_a = load_checkpoint(latest_checkpoint(tmp_path / "a"))  # type: ignore[arg-type]
    ck_b = load_checkpoint(latest_checkpoint(tmp_path / "b"))  # type: ignore[arg-type]
    assert_same_tensors(ck_a.model, ck_b.model)
    assert ck_a.state["samples_seen"] == ck_b.state["samples_seen"] == 12
    # Only the newest checkpoints are kept (keep_checkpoints = 2).
    kept = sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("iter_*"))
    assert kept == ["iter_00000004", "iter_00000006"]


def test_ctrl_c_checkpoints_then_resume_matches(vimeo: Path, tmp_path: Path) -> None:
    straight = train(tiny(vimeo, tmp_path / "a", iterations=4))

    def interrupt(iteration: int) -> None:
        if iteration == 2:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers

    before = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN in a background job
    result = Trainer(tiny(vimeo, tmp_path / "b", iterations=4)).run(on_iteration=interrupt)
    assert (result.stopped, result.iteration) == ("SIGINT", 2)
    assert result.checkpoint is not None and (result.checkpoint / "state.pt").is_file()
    assert not (tmp_path / "b" / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    train(tiny(vimeo, tmp_path / "b", iterations=4), resume=True)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert straight.weights is not None
    assert_same_tensors(
        load_file(str(straight.weights)), load_file(str(tmp_path / "b" / "model.safetensors"))
    )


def test_log_windows_survive_a_stop_inside_them(vimeo: Path, tmp_path: Path) -> None:
    """With log_every=4, stopping at 3 must not cut the window: the log is the same."""
    train(tiny(vimeo, tmp_path / "a", iterations=8, log_every=4, val_every=0))
    cfg = tiny(vimeo, tmp_path / "b", iterations=8, log_every=4, val_every=0)
    train(cfg, stop_after=3)
    assert losses(tmp_path / "b") == []
    train(cfg, resume=True)
    assert [i for i, _ in losses(tmp_path / "a")] == [4, 8]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_two_stage_curriculum_freezes_and_reloads(vimeo: Path, tmp_path: Path) -> None:
    """Stage 1 trains only extract + reconstruct on static clips; stage 2 starts from it."""
    data = tiny_dict(vimeo, tmp_path / "s1", iterations=2, val_every=0, ema_decay=0.0)
    data["data"]["static_prob"] = 1.0
    data["train"]["freeze"] = ["interpolate", "aggregate"]
    stage1 = train(TrainConfig.from_dict(data))
    assert stage1.weights is not None
    torch.manual_seed(0)  # the run's seed: the same initial weights
    before = zsm.ZoomingSlowMo(TrainConfig.from_dict(data).model.zsm_config()).state_dict()
    after = load_file(str(stage1.weights))
    for name, value in after.items():
        frozen = name.startswith(("interpolate.", "aggregate."))
        assert torch.equal(value, before[name]) == frozen, name
    stage2 = tiny_dict(vimeo, tmp_path / "s2", iterations=1, val_every=0)
    stage2["train"]["init"] = str(stage1.weights)
    train(TrainConfig.from_dict(stage2), stop_after=0)
    first = load_checkpoint(latest_checkpoint(tmp_path / "s2"))  # type: ignore[arg-type]
    assert_same_tensors(first.model, after)  # iteration 0 = the stage-1 weights
    # The starting point is validated once, so that stage 2 can be judged against it.
    from zsm.models.weights import model_from_file
    from zsm.training.build import build_validation
    from zsm.training.validate import validate

    start = [e for e in read_log(tmp_path / "s2") if "val_psnr_y_init" in e]
    cfg2 = TrainConfig.from_dict(stage2)
    expected, _ = validate(
        model_from_file(stage1.weights),
        build_validation(cfg2.data, seed=cfg2.train.seed),
        device=torch.device("cpu"),
    )
    assert [e["iter"] for e in start] == [0]
    assert start[0]["val_psnr_y_init"] == pytest.approx(expected, abs=1e-6)
    data["train"]["freeze"] = ["no_such_module"]
    with pytest.raises(ConfigError, match="no parameters under 'no_such_module'"):
        train(TrainConfig.from_dict({**data, "train": {**data["train"], "out_dir": "x"}}))


def test_every_source_kind_builds_from_config(vimeo: Path, tmp_path: Path) -> None:
    from zsm.training.build import build_training_set, build_validation

    frames = tmp_path / "vid4" / "clip"
    frames.mkdir(parents=True)
    photo = smooth_photo(3, 40, 48)
    for i in range(8):
        Image.fromarray(np.roll(photo, i, axis=1)).save(frames / f"{i:03d}.png")
    import av

    with av.open(str(tmp_path / "v.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 40, "yuv420p"
        for i in range(9):
            rgb = av.VideoFrame.from_ndarray(np.roll(photo, i, axis=0), format="rgb24")
            out.mux(stream.encode(rgb.reformat(format="yuv420p")))
        out.mux(stream.encode())
    Image.fromarray(photo).save(tmp_path / "photo.png")
    data = tiny_dict(vimeo, tmp_path / "run")["data"]
    data["root"] = str(tmp_path)
    data["train"] = [
        {"kind": "vimeo", "path": str(vimeo)},
        {"kind": "frames", "path": "vid4"},
        {"kind": "videos", "path": "v.mp4", "frames": [0, 8], "cache_mb": 0},
        {"kind": "synthetic", "photos": ".", "size": 5, "max_speed": 1.0},
    ]
    data["val"] = {"kind": "frames", "path": "vid4", "crop": 16, "windows": 3}
    config = TrainConfig.from_dict({"data": data})
    pairs = build_training_set(config.data)
    assert len(pairs) == 3 + 2 + 2 + 5
    for index in range(len(pairs)):
        lr, hr = pairs[(index, 1)]
        assert lr.shape == (4, 3, 4, 4) and hr.shape == (7, 3, 16, 16)
    clips = build_validation(config.data, seed=0)
    assert [tuple(hr.shape) for _, hr in clips] == [(7, 3, 16, 16)] * 2  # 2 windows exist
    # A [[data.val]] list: a held-out video and synthetic motion, scored together.
    synthetic = {"kind": "synthetic", "photos": ".", "size": 4, "max_speed": 3.0, "crop": 12}
    data["val"] = [data["val"], {**synthetic, "windows": 2}]
    listed = build_validation(TrainConfig.from_dict({"data": data}).data, seed=0)
    assert [tuple(hr.shape) for _, hr in listed] == [(7, 3, 16, 16)] * 2 + [(7, 3, 12, 12)] * 2
    assert all(torch.equal(a[1], b[1]) for a, b in zip(clips, listed[:2], strict=False))
    again = build_validation(TrainConfig.from_dict({"data": data}).data, seed=0)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(listed, again, strict=True))
    with pytest.raises(ConfigError, match=r"data.val\[1\]: crop must be a multiple of 4"):
        data["val"][1] = {**synthetic, "crop": 10}
        build_validation(TrainConfig.from_dict({"data": data}).data, seed=0)
    with pytest.raises(ConfigError, match=r"unknown keys \['fps'\]"):
        data["train"] = [{"kind": "videos", "path": "v.mp4", "fps": 3}]
        build_training_set(TrainConfig.from_dict({"data": data}).data)
    with pytest.raises(ConfigError, match="unknown kind 'lmdb'"):
        data["train"] = [{"kind": "lmdb", "path": "x"}]
        build_training_set(TrainConfig.from_dict({"data": data}).data)


def test_runs_refuse_to_clobber_or_resume_nothing(vimeo: Path, tmp_path: Path) -> None:
    with pytest.raises(ZSMError, match="nothing to resume"):
        train(tiny(vimeo, tmp_path / "r", iterations=1), resume=True)
    train(tiny(vimeo, tmp_path / "r", iterations=1, val_every=0))
    with pytest.raises(ZSMError, match="already holds checkpoints"):
        train(tiny(vimeo, tmp_path / "r", iterations=1))


def test_failed_checkpoint_write_keeps_the_previous_one(
    vimeo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "r"
    train(tiny(vimeo, out, iterations=2, val_every=0), stop_after=1)
    real_save = torch.save

    def failing_save(obj: object, f: object, *a: object, **kw: object) -> None:
        real_save(obj, f, *a, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(zsm.OutputError, match="no space left"):
        train(tiny(vimeo, out, iterations=2, val_every=0), resume=True)
    monkeypatch.undo()
    assert latest_checkpoint(out) == out / "checkpoints" / "iter_00000001"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "iter_00000001",
        "latest.json",
    ]


def test_overfits_one_septuplet_quickly(tmp_path: Path) -> None:
    """A tiny model fits one septuplet: the loss falls to under half within ~5 CPU seconds.

    (Measured on 2 cores: 60 iterations in 5.2 CPU s, loss 0.42 -> 0.14; clips of 3
    frames, 2 LR inputs of 8x8, keep the step cheap; the budget leaves room for a busy machine.)
    """
    one = make_vimeo(tmp_path / "one", train=1, test=0, size=32, blob=24)
    data = tiny_dict(one, tmp_path / "run", iterations=60, val_every=0, ema_decay=0.0)
    data["data"].update(
        batch_size=1, lr_patch=8, clip_frames=3, flips=False, rotate=False, reverse=False
    )
    data["data"].pop("val")
    data["train"].update(grad_clip=0.0)
    data["optim"]["lr"] = 3e-3
    data["schedule"] = {"periods": [60], "eta_min": 3e-4}
    threads = torch.get_num_threads()
    start = time.process_time()
    train(TrainConfig.from_dict(data))
    cpu = time.process_time() - start
    assert torch.get_num_threads() == threads  # train.threads is restored afterwards
    curve = [loss for _, loss in losses(tmp_path / "run")]
    first, last = float(np.mean(curve[:5])), float(np.mean(curve[-5:]))
    assert last < 0.5 * first, (first, last)
    assert cpu < 30, f"{cpu:.1f} CPU seconds"


def test_cli_train_stop_resume_and_load(vimeo: Path, tmp_path: Path, capsys) -> None:
    import tomllib  # noqa: F401 (the file below must be valid TOML)

    cfg = tmp_path / "tiny.toml"
    d = tiny_dict(vimeo, tmp_path / "run", iterations=3, val_every=0)
    cfg.write_text(_to_toml(d))
    assert cli_main(["train", str(cfg), "--stop-after", "2"]) == 0
    err = capsys.readouterr().err
    assert "stopped at iteration 2" in err and "--resume" in err
    assert cli_main(["train", str(cfg), "train.log_every=3", "--resume"]) == 0
    assert "training done at iteration 3" in capsys.readouterr().err
    model = zsm.load_model(tmp_path / "run" / "model.safetensors")
    assert model.config.nf == 8
    out = model(torch.rand(1, 2, 3, 4, 4))
    assert out.shape == (1, 3, 3, 16, 16)
    assert cli_main(["train", str(cfg), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["iterations"] == 3
    assert cli_main(["train", str(tmp_path / "missing.toml")]) == 2


def _to_toml(data: dict[str, Any]) -> str:
    """Just enough TOML writing for the test configs (tables, arrays of tables, scalars)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    lines = [f"name = {value(data['name'])}"]
    for section, table in data.items():
        if section == "name":
            continue
        lines.append(f"[{section}]")
        nested = []
        for k, v in table.items():
            if isinstance(v, dict):
                nested.append((f"[{section}.{k}]", [v]))
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                nested.append((f"[[{section}.{k}]]", v))
            else:
                lines.append(f"{k} = {value(v)}")
        for header, items in nested:
            for item in items:
                lines.append(header)
                lines += [f"{k} = {value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def test_ddp_two_processes_on_gloo_match_one_process(vimeo: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes x batch 1 == 1 process x batch 2 (same samples, same steps)."""
    d = tiny_dict(vimeo, tmp_path / "ddp", iterations=3, val_every=0, checkpoint_every=2)
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(_to_toml(d))
    single = train(load_config(cfg, [f"train.out_dir={tmp_path / 'single'}"]))
    launcher = tmp_path / "launch.py"
    launcher.write_text("import sys\nfrom zsm.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(launcher),
        "train",
        str(cfg),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "training done at iteration 3" in proc.stderr
    ddp_losses, single_losses = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert [i for i, _ in ddp_losses] == [1, 2, 3]
    np.testing.assert_allclose(
        [v for _, v in ddp_losses], [v for _, v in single_losses], rtol=1e-4, atol=1e-6
    )
    assert single.weights is not None
    a = load_file(str(tmp_path / "ddp" / "model.safetensors"))
    b = load_file(str(single.weights))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    state = load_checkpoint(latest_checkpoint(tmp_path / "ddp")).state  # type: ignore[arg-type]
    assert state["world_size"] == 2 and state["samples_seen"] == 6


def test_cpu_bf16_autocast_trains_and_resumes_exactly(vimeo: Path, tmp_path: Path) -> None:
    """train.amp = "bf16" on the CPU: the forward pass under bf16 autocast (convs in bf16),
    finite losses, weights that move, and stop + resume equal to one straight run."""
    from zsm.training.loop import Trainer

    config = tiny(vimeo, tmp_path / "a", amp="bf16")
    assert Trainer(config)._amp_dtype(torch.device("cpu")) == torch.bfloat16
    # channels-last weights (oneDNN's bf16 convs are fast NHWC), also in the EMA copy;
    # float32 runs keep NCHW
    cpu = Dist(rank=0, world_size=1, device=torch.device("cpu"))
    for amp, nhwc in (("bf16", True), ("off", False)):
        state = Trainer(tiny(vimeo, tmp_path / amp, amp=amp))._build_state(cpu)
        for net in (state.model, state.ema.module if state.ema else state.model):
            w = net.extract.head.weight
            assert w.is_contiguous(memory_format=torch.channels_last) == nhwc, amp
    straight = train(config)
    run_a = losses(tmp_path / "a")
    assert len(run_a) == 6 and all(np.isfinite(v) for _, v in run_a)
    train(tiny(vimeo, tmp_path / "b", amp="bf16", checkpoint_every=2), stop_after=3)
    train(tiny(vimeo, tmp_path / "b", amp="bf16", checkpoint_every=2), resume=True)
    assert losses(tmp_path / "b") == run_a
    assert straight.weights is not None
    assert_same_tensors(
        load_file(str(tmp_path / "a" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model.safetensors")),
    )
    # fp32 and bf16 runs start alike and differ by bf16 rounding only.
    train(tiny(vimeo, tmp_path / "c"))
    first_fp32, first_bf16 = losses(tmp_path / "c")[0][1], run_a[0][1]
    assert first_bf16 != first_fp32 and abs(first_bf16 - first_fp32) < 0.02 * first_fp32


def test_auto_amp_stays_float32_on_the_cpu(vimeo: Path, tmp_path: Path) -> None:
    from zsm.training.loop import Trainer

    for amp in ("auto", "off", "fp16"):
        assert Trainer(tiny(vimeo, tmp_path, amp=amp))._amp_dtype(torch.device("cpu")) is None


def test_fp16_training_on_the_cpu_warns_as_inference_does(
    vimeo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from zsm.engine import precision
    from zsm.training.loop import Trainer

    precision._warn_once.cache_clear()
    with caplog.at_level("WARNING", logger="zsm"):
        assert Trainer(tiny(vimeo, tmp_path, amp="fp16"))._amp_dtype(torch.device("cpu")) is None
    assert "fp16 applies to GPUs only" in caplog.text


# --- time factors (data.time_factors) -------------------------------------------------


def test_cli_trains_a_time_conditioned_network_from_x2_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zsm train` of a tiny time-conditioned network on samples at several time steps, from
    the weights of a flow-guided one without the time input: those load, the time modulation
    keeps its (identity) initialisation, named in one line; validation scores x2 and x4."""
    from zsm.models.weights import model_from_file
    from zsm.training.build import build_validation, build_validation_at
    from zsm.training.validate import validate, validate_at

    Image.fromarray(smooth_photo(5)).save(tmp_path / "photo.png")
    flow_model = {**TINY_MODEL, "global_skip": True, "flow_guided": True}
    torch.manual_seed(1)
    x2 = zsm.save_weights(
        zsm.ZoomingSlowMo(zsm.ZSMConfig(**{k: v for k, v in flow_model.items() if k != "preset"})),
        tmp_path / "x2.safetensors",
    )
    d = tiny_dict(tmp_path, tmp_path / "run", iterations=2, val_every=2, init=str(x2))
    d["model"] = {**flow_model, "time_conditioned": True}
    synthetic = {"kind": "synthetic", "photos": ".", "size": 4, "max_speed": 2.0}
    d["data"]["train"] = [synthetic]
    d["data"]["val"] = {**synthetic, "size": 2, "crop": 16}
    d["data"].update(time_factors=[2, 4], time_factor_weights=[0.5, 0.5])
    cfg = tmp_path / "tiny-time.toml"
    cfg.write_text(_to_toml(d))
    assert cli_main(["train", str(cfg)]) == 0
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if "keep their initialisation" in ln]
    assert len(line) == 1 and "28 tensors not in" in line[0] and "blend_time" in line[0]
    model = zsm.load_model(tmp_path / "run" / "model.safetensors")
    assert model.config.time_conditioned
    out = model(torch.rand(1, 2, 3, 4, 4), flow=torch.zeros(1, 1, 4, 4, 4), times=[[0.3, 0.6]])
    assert out.shape == (1, 4, 3, 16, 16)
    log = read_log(tmp_path / "run")
    scores = {k: v for e in log for k, v in e.items() if k.startswith("val_")}
    expected = {"val_psnr_y", "val_psnr_y_ema", "val_psnr_y_x4", "val_psnr_y_x4_ema"}
    assert expected | {"val_psnr_y_x4_flow_skip", "val_psnr_y_init"} <= set(scores)
    assert [e["iter"] for e in log if "val_psnr_y_x4" in e] == [2]
    # The start is the x2 network at every t: its scores, at x2 and at x4.
    data = load_config(cfg).data
    net = model_from_file(x2)
    cpu = torch.device("cpu")
    start_x2, _ = validate(net, build_validation(data, seed=0), device=cpu)
    start_x4, _ = validate_at(net, build_validation_at(data, seed=0, factor=4), device=cpu)
    assert scores["val_psnr_y_init"] == pytest.approx(start_x2, abs=1e-6)
    assert scores["val_psnr_y_x4_init"] == pytest.approx(start_x4, abs=1e-6)
    # A network without flow guidance cannot make frames at other time steps.
    d["model"] = dict(TINY_MODEL)
    d["train"].update(init="", out_dir=str(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="frames at any time step"):
        train(TrainConfig.from_dict(d))
