"""Weights I/O: safetensors round trip, official checkpoints, refusing unsafe pickles."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import zsm
from zsm import WeightsError, ZoomingSlowMo, ZSMConfig
from zsm.cli import main
from zsm.models.official_names import official_name_map
from zsm.models.weights import model_from_official_state, read_weights

TINY = ZSMConfig(nf=8, groups=2, front_RBs=1, back_RBs=2, hr_nf=8, global_skip=True)


def test_safetensors_round_trip_rebuilds_same_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ZoomingSlowMo(TINY).eval()
    path = zsm.save_weights(model, tmp_path / "m.safetensors", metadata={"note": {"a": 1}})
    config, _, meta = read_weights(path)
    assert config == TINY
    assert meta["note"] == '{"a": 1}'
    loaded = zsm.load_model(path)
    x = torch.rand(1, 2, 3, 6, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "temp file left behind"


def test_half_precision_file_loads_as_float32(tmp_path: Path) -> None:
    model = ZoomingSlowMo(TINY)
    path = zsm.save_weights(model, tmp_path / "h.safetensors", dtype=torch.float16)
    loaded = zsm.load_model(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ref = model.reconstruct.out_conv.weight.detach().half().float()
    torch.testing.assert_close(loaded.reconstruct.out_conv.weight.detach(), ref)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned-by-zsm",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"conv_first.weight": _Evil()}, f)
    with pytest.raises(WeightsError, match="refused to load"):
        zsm.read_official_checkpoint(path)
    assert main(["convert-weights", str(path), str(tmp_path / "out.safetensors")]) == 2
    assert not (tmp_path / "pwned-by-zsm").exists()
    assert not (tmp_path / "out.safetensors").exists()


def _official_state(config: ZSMConfig) -> dict[str, torch.Tensor]:
    model = ZoomingSlowMo(config)
    ours = model.state_dict()
    return {off: ours[name].clone() for off, name in official_name_map(config).items()}


def test_convert_refuses_to_overwrite_its_input(tmp_path: Path, capsys) -> None:
    path = tmp_path / "official.pth"
    torch.save(_official_state(TINY), path)
    before = path.read_bytes()
    assert main(["convert-weights", str(path), str(tmp_path / "." / "official.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the input; choose another name" in err, err
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_official_config_is_inferred_from_shapes() -> None:
    config = ZSMConfig(nf=16, groups=4, front_RBs=3, back_RBs=2, hr_nf=24)
    model = model_from_official_state(_official_state(config), "ckpt")
    assert model.config == config


def test_official_missing_and_unexpected_keys_are_listed() -> None:
    state = _official_state(ZSMConfig(nf=8, groups=2, front_RBs=1, back_RBs=1, hr_nf=8))
    del state["fusion.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"missing keys \[fusion.weight\].*unexpected keys"):
        model_from_official_state(state, "ckpt")


def test_not_a_checkpoint_is_named() -> None:
    with pytest.raises(WeightsError, match="not an official Zooming Slow-Mo checkpoint"):
        model_from_official_state({"foo": torch.zeros(1)}, "ckpt")


def test_truncated_safetensors_is_a_clear_error(tmp_path: Path) -> None:
    path = zsm.save_weights(ZoomingSlowMo(TINY), tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"t\.safetensors"):
        zsm.load_model(path)


def test_wrong_shape_safetensors_names_the_mismatch(tmp_path: Path) -> None:
    path = zsm.save_weights(ZoomingSlowMo(TINY), tmp_path / "w.safetensors")
    _, state, meta = read_weights(path)
    state["reconstruct.out_conv.weight"] = torch.zeros(3, 8, 5, 5)
    from safetensors.torch import save_file

    save_file(state, str(path), metadata=meta)
    with pytest.raises(WeightsError, match=r"wrong shapes \[reconstruct.out_conv.weight"):
        zsm.load_model(path)


def test_unknown_weights_name() -> None:
    with pytest.raises(WeightsError, match="unknown weights 'nope'"):
        zsm.load_model("nope")
    with pytest.raises(WeightsError, match="weights file not found"):
        zsm.load_model("missing/file.safetensors")


def test_export_script_writes_the_ema_as_float16_with_its_provenance(tmp_path) -> None:
    import subprocess
    import sys

    from safetensors import safe_open

    from zsm.models.weights import save_weights

    torch.manual_seed(0)
    cfg = ZSMConfig(
        nf=8, groups=2, front_RBs=1, back_RBs=1, hr_nf=8, global_skip=True, flow_guided=True,
        time_conditioned=True,
    )  # fmt: skip
    ckpt = tmp_path / "iter_00001500"
    ckpt.mkdir()
    raw, ema = ZoomingSlowMo(cfg), ZoomingSlowMo(cfg)
    save_weights(raw, ckpt / "model.safetensors")
    save_weights(ema, ckpt / "ema.safetensors")
    out = tmp_path / "shipped.safetensors"
    script = Path(__file__).parents[1] / "scripts" / "export_weights.py"
    run = [sys.executable, str(script), str(ckpt), str(out), "--recipe", "a test recipe"]
    subprocess.run(run, check=True, capture_output=True)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        names = f.keys()
        assert {f.get_tensor(k).dtype for k in names} == {torch.float16}
    assert meta["zsm.weights"] == "EMA at iteration 1500"
    assert meta["zsm.recipe"] == "a test recipe"
    assert meta["zsm.time_factor"] == "any"
    config, state, _ = read_weights(out)
    assert config == cfg
    for name, tensor in ema.state_dict().items():
        torch.testing.assert_close(state[name].float(), tensor.half().float())
    bad = subprocess.run(
        [*run[:2], str(tmp_path / "nope"), str(out), "--recipe", "x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "no such checkpoint" in bad.stderr
