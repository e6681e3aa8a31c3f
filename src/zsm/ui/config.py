"""The web app's settings: what ``zsm ui``'s options set, with the safe defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_MAX_UPLOAD_MB = 200.0
DEFAULT_KEEP_MINUTES = 60.0


@dataclass(frozen=True, kw_only=True)
class UiSettings:
    """How one app instance runs.

    Attributes:
        work_dir: the folder for every upload and result (``None``: a new temporary
            folder, removed when the app stops).
        max_upload_mb: largest upload accepted, in megabytes.
        keep_minutes: uploads and results untouched this long are removed.
        weights: weights names or ``.safetensors`` files offered besides the bundled
            ones; the first is the default.
        device: the default device (``auto``: CUDA, then MPS, then CPU).
        threads: CPU threads per job (``None``: torch's default).
        sweep_seconds: how often expired files are looked for.
    """

    work_dir: Path | None = None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    keep_minutes: float = DEFAULT_KEEP_MINUTES
    weights: tuple[str, ...] = ()
    device: str = "auto"
    threads: int | None = None
    sweep_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if self.keep_minutes <= 0:
            raise ValueError(f"keep_minutes must be > 0, got {self.keep_minutes}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)
