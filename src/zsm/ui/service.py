"""What the web app does, without its page: check uploads, queue upscalings, compare results.

:class:`UpscaleService` is the app's back end. Every upscaling goes through
:func:`zsm.upscale_video` (with ``on_progress`` and ``cancel``), and the
side-by-side video and contact sheet are those of ``zsm demo``
(:mod:`zsm.demo`). The page (:mod:`zsm.ui.app`) only calls this class, so it
is tested without a browser or Gradio.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from zsm.demo import demo_clip, write_comparison
from zsm.device import resolve_device
from zsm.errors import InputError, ZSMError
from zsm.models.registry import registered_weights, resolve_weights
from zsm.options import DEFAULT_TIME_FACTOR, DEFAULTS, UpscaleOptions
from zsm.ui import text
from zsm.ui.config import UiSettings
from zsm.ui.files import Sweeper, WorkFolder, check_upload
from zsm.ui.jobs import Job, JobQueue, JobState
from zsm.upscale import UpscaleResult, upscale_video
from zsm.video.io import probe

log = logging.getLogger("zsm")

RESULT_SUFFIX = "-zsm.mp4"


@dataclass(frozen=True)
class JobRequest:
    """What a job upscales and where its files go."""

    src: Path
    name: str  # the upload's file name, as the user knows it
    options: UpscaleOptions
    folder: Path  # under the work folder's jobs/


@dataclass(frozen=True)
class Comparison:
    side_by_side: Path
    contact_sheet: Path


class UpscaleService:
    """Uploads in, queued upscaling jobs, results out; one instance per app."""

    def __init__(self, settings: UiSettings) -> None:
        self.settings = settings
        self.weights = _weights_choices(settings.weights)
        self.devices = _devices(settings.device)
        self.work = WorkFolder.open(settings.work_dir)
        self.queue = JobQueue()
        self._latest: dict[str, Job] = {}  # browser session -> its latest job
        self._lock = threading.Lock()
        sample_dir = self.work.root / "sample"
        sample_dir.mkdir(exist_ok=True)
        self.sample = sample_dir / demo_clip().name
        shutil.copyfile(demo_clip(), self.sample)
        self.sweeper = Sweeper(
            self.work,
            settings.keep_minutes * 60,
            keep=self._in_use,
            interval=settings.sweep_seconds,
        ).start()

    # --- what the page shows before a job -----------------------------------------------

    def inspect(self, upload: str | Path, time_factor: int) -> str:
        """Markdown about the upload and its output; a :class:`ZSMError` if it is unusable."""
        path = self._checked_upload(upload)
        try:
            info = probe(path)
        except ZSMError as exc:
            raise type(exc)(_user_message(exc, path)) from None
        return text.describe(path.name, info, time_factor)

    # --- jobs -----------------------------------------------------------------------------

    def submit(
        self,
        session: str,
        upload: str | Path | None,
        *,
        weights: str,
        device: str,
        precision: str = DEFAULTS.precision,
        ensemble: int = DEFAULTS.ensemble,
        time_factor: int = DEFAULT_TIME_FACTOR,
        crf: int = DEFAULTS.crf,
    ) -> Job:
        """Check the upload and options, then queue the upscaling; returns the job.

        A refusal is a :class:`ZSMError` and also the session's latest job (failed),
        so that the page shows it where it shows a job's outcome.
        """
        try:
            request = self._request(
                upload,
                weights=weights,
                device=device,
                precision=precision,
                ensemble=ensemble,
                time_factor=time_factor,
                crf=crf,
            )
        except ZSMError as exc:
            with self._lock:
                self._latest[session] = Job.refused(str(exc))
            raise
        job = self.queue.submit(_queue_key(device), self._run, context=request)
        with self._lock:
            self._latest[session] = job
        return job

    def _request(
        self,
        upload: str | Path | None,
        *,
        weights: str,
        device: str,
        precision: str,
        ensemble: int,
        time_factor: int,
        crf: int,
    ) -> JobRequest:
        if upload is None:
            raise InputError("no video: upload one, or pick the sample clip")
        path = self._checked_upload(upload)
        if weights not in self.weights:
            raise InputError(
                f"unknown weights {weights!r}; choose one of: {', '.join(self.weights)}"
            )
        if device not in self.devices:
            raise InputError(f"unknown device {device!r}; choose one of: {', '.join(self.devices)}")
        try:
            options = UpscaleOptions(
                weights=self.weights[weights],
                device=device,
                precision=precision,
                ensemble=int(ensemble),
                time_factor=int(time_factor),
                crf=int(crf),
                threads=self.settings.threads,
            )
        except (TypeError, ValueError) as exc:
            raise InputError(str(exc)) from None
        try:
            probe(path)  # a corrupt upload fails now, not after waiting in the queue
        except ZSMError as exc:
            raise type(exc)(_user_message(exc, path)) from None
        folder = Path(tempfile.mkdtemp(prefix="job-", dir=self.work.jobs))
        return JobRequest(src=path, name=path.name, options=options, folder=folder)

    def latest(self, session: str) -> Job | None:
        with self._lock:
            return self._latest.get(session)

    def cancel(self, session: str) -> Job | None:
        """Cancel the session's job if it waits or runs; returns it (None: nothing to cancel)."""
        job = self.latest(session)
        if job is None or job.finished:
            return None
        self.queue.cancel(job)
        if job.state == JobState.CANCELLED:  # it never ran: its folder is still empty
            shutil.rmtree(job.context.folder, ignore_errors=True)
        return job

    def ahead(self, job: Job) -> int:
        return self.queue.ahead(job)

    def _run(self, job: Job) -> UpscaleResult:
        request: JobRequest = job.context
        stem = re.sub(r"[^\w.-]+", "_", Path(request.name).stem)[:80] or "video"
        dst = request.folder / f"{stem}{RESULT_SUFFIX}"

        def report(p: object) -> None:
            job.progress = p

        try:
            return upscale_video(
                request.src,
                dst,
                request.options,
                progress=False,
                on_progress=report,
                cancel=job.cancel,
            )
        except ZSMError as exc:
            shutil.rmtree(request.folder, ignore_errors=True)
            raise type(exc)(_user_message(exc, request.src)) from None
        except ValueError as exc:
            # An option the device cannot honour (bf16 on an older GPU) is the user's to
            # change, not a bug; upscale_video raises it as a ValueError.
            shutil.rmtree(request.folder, ignore_errors=True)
            raise InputError(_user_message(exc, request.src)) from None
        except BaseException:
            shutil.rmtree(request.folder, ignore_errors=True)
            raise

    # --- after a job ----------------------------------------------------------------------

    def compare(self, job: Job) -> Comparison | None:
        """The side-by-side video and contact sheet of a finished job (made once).

        None when the job kept the frame rate: the comparison shows each input frame
        twice against zsm's two output frames, so it needs ``time_factor=2``.
        """
        request: JobRequest = job.context
        result: UpscaleResult = job.result
        if job.state != JobState.DONE or request.options.effective_time_factor != 2:
            return None
        out = Comparison(request.folder / "side_by_side.mp4", request.folder / "contact_sheet.png")
        if not (out.side_by_side.is_file() and out.contact_sheet.is_file()):
            write_comparison(request.src, result.output, out.side_by_side, out.contact_sheet, None)
        return out

    # --- housekeeping ---------------------------------------------------------------------

    def _checked_upload(self, upload: str | Path) -> Path:
        path = Path(upload)
        if not self.work.contains(path):
            # Gradio hands over only its own uploads; anything else is a crafted request.
            raise InputError(f"{path.name} was not uploaded to this app; upload it again")
        try:
            return check_upload(path, self.settings.max_upload_bytes)
        except InputError:
            # Gradio stores any upload; what the app refuses is not kept until expiry.
            if path.parent != self.sample.parent:
                path.unlink(missing_ok=True)
            raise

    def _in_use(self) -> list[Path]:
        """Paths the sweeper must keep: the sample and what unfinished jobs use."""
        paths = [self.sample]
        with self._lock:
            jobs = list(self._latest.values())
            # Sessions whose job finished long ago are forgotten with their files.
            limit = time.monotonic() - self.settings.keep_minutes * 60
            for key, job in list(self._latest.items()):
                if job.finished and job.created < limit:
                    del self._latest[key]
        for job in jobs + self.queue.running():
            if not job.finished:
                request: JobRequest = job.context
                paths += [request.src, request.folder]
        return paths

    def close(self) -> None:
        """Cancel every job, stop the workers and the sweeper, remove an owned work folder."""
        self.sweeper.stop()
        self.queue.close()
        self.work.close()


def _user_message(exc: BaseException, path: Path) -> str:
    """``str(exc)`` with the upload's server path shown as its file name, as the user knows it.

    The CLI prints the path it was given; here that is the name the user uploaded.
    """
    message = str(exc)
    for form in {os.path.realpath(path), str(path), os.path.abspath(path)}:
        message = message.replace(form, path.name)
    return message


def _weights_choices(extra: tuple[str, ...]) -> dict[str, str]:
    """Label -> weights name or file, of each weights offered: ``extra`` first, then the
    installed bundled ones. Files are offered by their name: the page and the API never
    see (or take) a server path."""
    registered = registered_weights()
    choices: dict[str, str] = {}
    for item in extra:
        if item in registered:
            choices[item] = item
        else:
            path = resolve_weights(item).resolve()
            label = path.name if path.name not in choices else str(path)
            choices[label] = str(path)
    for name, entry in registered.items():
        if entry.path.is_file() and name not in choices:
            choices[name] = name
    if not choices:
        raise ZSMError("no weights to offer: the bundled weights are missing; pass --weights FILE")
    return choices


def _devices(default: str) -> list[str]:
    """The default device first, then every device this machine has."""
    resolve_device(default)  # an unusable --device is an error at start, not per job
    found = ["cpu"]
    found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return [default] + [d for d in found if d != default]


def _queue_key(device: str) -> str:
    """One queue per physical device: ``auto`` and ``cuda`` name ``cuda:0`` too."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
    return dev.type
