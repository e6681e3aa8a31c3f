"""Training configuration: TOML (or YAML) files under ``configs/``, with ``a.b=value`` overrides.

The file has the sections ``[model]``, ``[data]`` (with ``[[data.train]]``
sources and an optional ``[data.val]``), ``[optim]``, ``[schedule]`` and
``[train]``; every key has a default below, and unknown keys are errors (a
typo must not silently train with the default).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsm.data.timesteps import TimeFactors
from zsm.errors import ZSMError
from zsm.models.config import PRESETS, ZSMConfig


class ConfigError(ZSMError):
    """A training config file or override cannot be used."""


@dataclass
class ModelSection:
    """Network: a named preset, optionally with some sizes overridden."""

    preset: str = "compact"
    nf: int | None = None
    groups: int | None = None
    front_RBs: int | None = None
    back_RBs: int | None = None
    hr_nf: int | None = None
    global_skip: bool | None = None
    flow_guided: bool | None = None
    max_residual: float | None = None
    time_conditioned: bool | None = None

    def zsm_config(self) -> ZSMConfig:
        if self.preset not in PRESETS:
            raise ConfigError(
                f"model.preset {self.preset!r} unknown; choose from {sorted(PRESETS)}"
            )
        sizes = {
            k: v for k, v in dataclasses.asdict(self).items() if k != "preset" and v is not None
        }
        try:
            return ZSMConfig(**{**dataclasses.asdict(PRESETS[self.preset]), **sizes})
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from exc


@dataclass
class DataSection:
    """Training data, augmentation and optional degradations.

    ``train`` is a list of source tables (``kind`` = ``vimeo``, ``frames``
    (Vid4-style folders), ``videos`` or ``synthetic``; see
    :func:`zsm.training.build.build_source`); ``val`` one such table (or a
    list of them, ``[[data.val]]``, scored together) plus ``crop`` (HR centre
    crop, 0 = whole frame) and ``windows`` (how many 7-frame windows to score).
    Relative paths resolve against ``root``, which itself resolves against the
    current directory.

    ``time_factors`` (e.g. ``[2, 3, 4, 8]``; for a flow-guided network, which makes
    frames at any t, usually a time-conditioned one, which learns them):
    each sample draws a factor N (odds ``time_factor_weights``, default equal)
    and takes its inputs every N-th frame of a span of (n-1)*N+1 consecutive
    frames, its targets the inputs and one frame at t = j/N per gap, j drawn
    in 1..N-1 (:mod:`zsm.data.timesteps`). A clip too short for a factor draws
    from those that fit; clips too short for the smallest are left out (an
    error when a source has none). Synthetic motion renders its in-between
    targets at t exactly, over a clip of the smallest factor's span. Absent
    (the default), samples are exactly those of before, t = 1/2.
    """

    root: str = "."
    train: list[dict[str, Any]] = field(default_factory=list)
    val: dict[str, Any] | list[dict[str, Any]] | None = None
    batch_size: int = 16  # global: split evenly over the processes
    lr_patch: int = 32
    clip_frames: int = 7  # HR frames per training clip (odd): (clip_frames + 1) / 2 LR inputs
    flips: bool = True
    rotate: bool = True
    reverse: bool = True
    static_prob: float = 0.0
    noise_sigma: float = 0.0
    jpeg_quality: list[int] | None = None  # [min, max]
    jpeg_prob: float = 1.0
    workers: int = 0
    time_factors: list[int] | None = None  # e.g. [2, 3, 4, 8]: see the class
    time_factor_weights: list[float] | None = None  # one per factor; default equal


@dataclass
class OptimSection:
    """Adam."""

    lr: float = 4e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0


@dataclass
class ScheduleSection:
    """Cosine annealing with restarts (``periods`` in iterations; empty = one period, all run)."""

    periods: list[int] = field(default_factory=list)
    restart_weights: list[float] = field(default_factory=list)
    eta_min: float = 1e-7
    warmup: int = 0


@dataclass
class TrainSection:
    iterations: int = 1000
    seed: int = 0
    loss_eps: float = 1e-3
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    # "auto" (bf16, else fp16, on CUDA; off on CPU), "bf16" (also on CPUs), "fp16", "off"
    amp: str = "auto"
    ema_decay: float = 0.0  # 0 = no EMA
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    val_every: int = 1000
    out_dir: str = ""  # default runs/<config name>
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    freeze: list[str] = field(default_factory=list)  # module prefixes, e.g. "aggregate"
    init: str = ""  # optional weights file (safetensors) to start from
    progress: bool = True
    tensorboard: bool = True  # used only if the tensorboard package is installed


_SECTIONS = {
    "model": ModelSection,
    "data": DataSection,
    "optim": OptimSection,
    "schedule": ScheduleSection,
    "train": TrainSection,
}

# Keys whose change between a run and its resumption does not change the result.
RESUME_SAFE_KEYS = (
    "train.iterations",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.val_every",
    "train.threads",
    "train.progress",
    "train.tensorboard",
    "train.device",
    "data.workers",
    "data.root",
)


@dataclass
class TrainConfig:
    name: str = "run"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        unknown = sorted(set(data) - {"name", *_SECTIONS})
        if unknown:
            raise ConfigError(f"unknown config sections {unknown}; expected {sorted(_SECTIONS)}")
        kwargs: dict[str, Any] = {}
        if "name" in data:
            kwargs["name"] = str(data["name"])
        for name, section in _SECTIONS.items():
            kwargs[name] = _section(section, name, data.get(name, {}))
        config = cls(**kwargs)
        validate(config)
        return config

    @property
    def out_dir(self) -> Path:
        return Path(self.train.out_dir or f"runs/{self.name}")


def _section(cls: type, name: str, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown keys in [{name}]: {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if not _fits(value, hints[key]):
            raise ConfigError(f"{name}.{key} must be {_describe(hints[key])}, got {value!r}")
    return cls(**values)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a TOML/YAML ``value`` has the type ``hint`` (an int does for a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    """``int | None`` -> ``an int or none``, for messages."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "none"
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if typing.get_origin(hint) is dict:
        return "a table"
    word = {int: "integer", float: "number", bool: "boolean (true/false)", str: "string"}
    name = word.get(hint, getattr(hint, "__name__", str(hint)))
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def validate(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad value."""
    config.model.zsm_config()
    d, t, s = config.data, config.train, config.schedule
    checks = [
        (d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}"),
        (d.lr_patch >= 1, f"data.lr_patch must be >= 1, got {d.lr_patch}"),
        (
            d.clip_frames >= 3 and d.clip_frames % 2 == 1,
            f"data.clip_frames must be odd and >= 3, got {d.clip_frames}",
        ),
        (d.workers >= 0, f"data.workers must be >= 0, got {d.workers}"),
        (0 <= d.static_prob <= 1, f"data.static_prob must be in [0, 1], got {d.static_prob}"),
        (d.noise_sigma >= 0, f"data.noise_sigma must be >= 0, got {d.noise_sigma}"),
        (
            d.jpeg_quality is None or len(d.jpeg_quality) == 2,
            f"data.jpeg_quality must be [min, max], got {d.jpeg_quality}",
        ),
        (t.iterations >= 0, f"train.iterations must be >= 0, got {t.iterations}"),
        (t.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {t.checkpoint_every}"),
        (t.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}"),
        (t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}"),
        (t.val_every >= 0, f"train.val_every must be >= 0, got {t.val_every}"),
        (0 <= t.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {t.ema_decay}"),
        (t.grad_clip >= 0, f"train.grad_clip must be >= 0, got {t.grad_clip}"),
        (t.loss_eps > 0, f"train.loss_eps must be > 0, got {t.loss_eps}"),
        (
            t.amp in ("auto", "bf16", "fp16", "off"),
            f"train.amp must be auto, bf16, fp16 or off, got {t.amp!r}",
        ),
        (len(config.optim.betas) == 2, f"optim.betas must be [b1, b2], got {config.optim.betas}"),
        (all(p >= 1 for p in s.periods), f"schedule.periods must be >= 1, got {s.periods}"),
        (
            not s.restart_weights or len(s.restart_weights) == len(s.periods),
            "schedule.restart_weights must have one weight per period",
        ),
        (bool(d.train), "data.train lists no training source ([[data.train]] tables)"),
        (
            d.time_factor_weights is None or d.time_factors is not None,
            "data.time_factor_weights needs data.time_factors",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    time_factors(d)
    for i, source in enumerate([*d.train, *val_tables(d)]):
        if not isinstance(source, dict) or "kind" not in source:
            raise ConfigError(f"data source #{i} needs a 'kind' key, got {source!r}")


def time_factors(data: DataSection) -> TimeFactors | None:
    """The time factors of ``data`` (``None`` without ``data.time_factors``)."""
    if data.time_factors is None:
        return None
    weights = data.time_factor_weights
    try:
        return TimeFactors(
            tuple(data.time_factors),
            None if weights is None else tuple(float(w) for w in weights),
            inputs=(data.clip_frames + 1) // 2,
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"data.time_factors: {exc}") from exc


def val_tables(data: DataSection) -> list[dict[str, Any]]:
    """The validation source tables: none, one ``[data.val]`` or a ``[[data.val]]`` list."""
    if not data.val:
        return []
    return list(data.val) if isinstance(data.val, list) else [data.val]


# --- files and overrides --------------------------------------------------------------

CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")


def find_config(name_or_path: str | Path) -> Path:
    """A config path, or a name looked up in ``./configs`` and the source checkout's ``configs``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    here = Path(__file__).resolve().parents[3] / "configs"  # src/zsm/training -> repo root
    for folder in (Path("configs"), here):
        for suffix in ("", *CONFIG_SUFFIXES):
            candidate = folder / f"{name_or_path}{suffix}"
            if candidate.is_file():
                return candidate
    raise ConfigError(f"config not found: {name_or_path} (looked in ./configs and {here})")


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML or YAML file into a dict."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(f"{path} is YAML but PyYAML is not installed") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML in {path}: {exc}") from exc
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML in {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a table of settings")
    return data


def parse_value(text: str) -> Any:
    """An override's value: a TOML value (``100``, ``true``, ``[0, 50]``), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in nested ``data`` in place (integer parts index lists)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} is not of the form section.key=value")
    key = key.strip()
    *path, last = key.split(".")
    node: Any = data
    for i, part in enumerate(path):
        if isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}  # e.g. data.val.kind=... where there was no [data.val]
            node = node[part]
        elif isinstance(node, list):
            node = node[_list_index(node, part, key)]
        else:
            raise ConfigError(f"override {key}: {'.'.join(path[:i])} is not a table")
    value = parse_value(raw.strip())
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list):
        node[_list_index(node, last, key)] = value
    else:
        raise ConfigError(f"override {key}: {'.'.join(path)} is not a table")


def _list_index(node: list[Any], part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {key}: no list item {part} (the list has {len(node)})")
    return int(part)


def load_config(
    name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a config file (by path or name under ``configs/``) and apply overrides."""
    path = find_config(name_or_path)
    data = read_config_file(path)
    data.setdefault("name", path.stem)
    for override in overrides:
        apply_override(data, override)
    return TrainConfig.from_dict(data)


def flat_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        name = f"{prefix}{k}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += flat_diff(va, vb, f"{name}.")
        elif va != vb:
            out.append(name)
    return out
