"""The training loop: Charbonnier loss, Adam, cosine restarts, AMP, clipping, EMA, DDP, resume.

One iteration: a batch of (LR, HR) pairs from the deterministic data stream
(:mod:`zsm.training.sampler`), forward under autocast on CUDA, Charbonnier
loss in float32, backward, optional gradient clipping, Adam step, scheduler
step, EMA update. With ``data.time_factors`` a batch also carries the time of
every in-between target, given to the (flow-guided, usually time-conditioned)
network as ``times=`` (:mod:`zsm.data.timesteps`); such a run, and any
time-conditioned network, is also validated at x4 (``val_psnr_y_x4``: inputs
every 4th frame, in-betweens at 1/4, 1/2, 3/4).
Checkpoints every ``train.checkpoint_every`` iterations and
when a stop is requested (Ctrl-C, SIGTERM, ``stop_after``); ``resume``
restores weights, optimizer, scheduler, scaler, RNG states, the data position
and the partly summed loss of the current log window, so the resumed run
computes and logs exactly what an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from zsm.engine.precision import autocast_dtype
from zsm.errors import ZSMError
from zsm.models.weights import load_state_strict, read_weights, save_weights
from zsm.models.zsm import ZoomingSlowMo
from zsm.training import checkpoint as ckpt
from zsm.training.build import build_training_set, build_validation, build_validation_at
from zsm.training.config import RESUME_SAFE_KEYS, ConfigError, TrainConfig, flat_diff
from zsm.training.dist import Dist, StopSignals, ignore_sigint_in_worker, setup
from zsm.training.ema import EMA
from zsm.training.logs import RunLog
from zsm.training.loss import charbonnier
from zsm.training.runtime import _progress, _seed_everything, _sizes, _State, _unpack
from zsm.training.sampler import DataOrder, RankBatches
from zsm.training.schedule import CosineRestarts
from zsm.training.validate import (
    TimedValidationClip,
    ValidationClip,
    bicubic_psnr_y,
    flow_skip_psnr_y,
    flow_skip_psnr_y_at,
    validate,
    validate_at,
)

FINAL_WEIGHTS = "model.safetensors"
VAL_TIME_FACTOR = 4  # val_psnr_y_x4 of a time-conditioned network


@dataclass
class TrainResult:
    """How a call to :meth:`Trainer.run` ended."""

    iteration: int
    run_dir: Path
    checkpoint: Path | None  # the last checkpoint written or loaded
    weights: Path | None  # final weights, when the run reached train.iterations
    stopped: str | None  # "SIGINT", "SIGTERM" or "stop_after" if stopped early


class Trainer:
    """Trains a :class:`ZoomingSlowMo` from a :class:`TrainConfig` into ``run_dir``."""

    def __init__(self, config: TrainConfig, *, run_dir: Path | str | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else config.out_dir

    def run(
        self,
        *,
        resume: bool = False,
        stop_after: int | None = None,
        on_iteration: Callable[[int], None] | None = None,
    ) -> TrainResult:
        """Train until ``train.iterations`` (or ``stop_after`` more iterations, or a signal).

        ``on_iteration(i)`` is called after iteration ``i`` completes (tests use it).
        """
        threads = torch.get_num_threads()
        d = setup(self.config.train.device)
        try:
            if self.config.train.threads:
                torch.set_num_threads(self.config.train.threads)
            return self._run(d, resume=resume, stop_after=stop_after, on_iteration=on_iteration)
        finally:
            torch.set_num_threads(threads)
            d.close()

    # --- set-up ------------------------------------------------------------------------

    def _build_model(self, *, announce: bool = True) -> ZoomingSlowMo:
        cfg = self.config
        model = ZoomingSlowMo(cfg.model.zsm_config())
        if cfg.train.init:
            self._load_init(model, announce=announce)
        for prefix in cfg.train.freeze:
            hits = [
                p for n, p in model.named_parameters() if n == prefix or n.startswith(prefix + ".")
            ]
            if not hits:
                names = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
                raise ConfigError(f"train.freeze: no parameters under {prefix!r}; modules: {names}")
            for p in hits:
                p.requires_grad_(False)
        return model

    def _load_init(self, model: ZoomingSlowMo, *, announce: bool) -> None:
        """``train.init``'s weights into ``model``: the same network, or one step up, all
        else equal. Learned offsets -> flow-guided: the same tensors, the offset residuals
        zeroed so that training starts at the flow. No time input -> time-conditioned: the
        tensors the file lacks (the time modulation) keep their initialisation, which
        computes what the file's network computes; one line names them."""
        path = self.config.train.init
        config, state, _ = read_weights(path)
        target = model.config
        to_flow = target.flow_guided and not config.flow_guided
        to_time = target.time_conditioned and not config.time_conditioned
        if _sizes(config, flow=to_flow, time=to_time) != _sizes(target, flow=to_flow, time=to_time):
            raise ConfigError(f"train.init weights are {config}, the model is {target}")
        fresh: list[str] = []
        if to_time:
            own = model.state_dict()
            fresh = sorted(set(own) - set(state))
            state = {**state, **{k: own[k] for k in fresh}}
        load_state_strict(model, state, path)
        if to_flow:
            model.zero_offset_residuals_()
        if fresh and announce:
            modules = sorted({k.rsplit(".", 2)[0] for k in fresh})
            print(
                f"zsm: train.init: {len(fresh)} tensors not in {path} keep their "
                f"initialisation ({len(modules)} modules: {', '.join(modules)})",
                file=sys.stderr,
            )

    def _amp_dtype(self, device: torch.device) -> torch.dtype | None:
        """The forward pass's autocast dtype (``None``: float32); see ``train.amp``.

        On a CPU only an explicit ``bf16`` turns autocast on (``auto`` stays float32
        there, so that runs started before CPU autocast existed resume unchanged);
        :func:`zsm.engine.precision.autocast_dtype` warns where bf16 is not native.
        """
        amp = self.config.train.amp
        if amp == "off":
            return None
        if device.type == "cpu":  # fp16: float32, with the same warning as inference
            return autocast_dtype(device, amp) if amp in ("bf16", "fp16") else None
        if device.type != "cuda":
            return None
        if amp == "fp16":
            return torch.float16
        if amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def _build_state(self, d: Dist) -> _State:
        cfg, t = self.config, self.config.train
        _seed_everything(t.seed)  # the same initial weights in every process
        model = self._build_model(announce=d.is_main).to(d.device)
        amp_dtype = self._amp_dtype(d.device)
        if d.device.type == "cpu" and amp_dtype == torch.bfloat16:
            # oneDNN's bf16 convs are several times faster NHWC than NCHW (AMX: 1.4 vs 4.5
            # ms for a 32 -> 32 conv on (3, 32, 144, 176)): channels-last weights make every
            # conv, and so every activation, NHWC. One step of configs/zsm-compact.toml:
            # 1.79 s NCHW, 1.57 s NHWC (fp32: 2.48 s). Only here: fp32 runs stay as they
            # were, so that they resume bit for bit.
            model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(
            params,
            lr=cfg.optim.lr,
            betas=(cfg.optim.betas[0], cfg.optim.betas[1]),
            weight_decay=cfg.optim.weight_decay,
        )
        scheduler = CosineRestarts(
            optimizer,
            periods=cfg.schedule.periods or [max(1, t.iterations)],
            restart_weights=cfg.schedule.restart_weights or None,
            eta_min=cfg.schedule.eta_min,
            warmup=cfg.schedule.warmup,
        )
        return _State(
            model=model,
            net=model,
            params=params,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
            ema=EMA(model, t.ema_decay) if t.ema_decay else None,
            amp_dtype=amp_dtype,
            loss_sum=torch.zeros((), device=d.device),
        )

    def _metadata(self, iteration: int) -> dict[str, Any]:
        return {
            "zsm.recipe": self.config.name,
            "zsm.train.config": self.config.to_dict(),
            "zsm.train.iteration": iteration,
        }

    # --- checkpoints -------------------------------------------------------------------

    def _save(self, d: Dist, s: _State) -> Path | None:
        """Checkpoint iteration ``s.iteration`` (written by process 0; all processes call)."""
        window = d.all_reduce_mean(s.loss_sum)  # type: ignore[arg-type]
        path = None
        if d.is_main:
            state = {
                "samples_seen": s.samples_seen,
                "optimizer": s.optimizer.state_dict(),
                "scheduler": s.scheduler.state_dict(),
                "scaler": s.scaler.state_dict(),
                "rng": ckpt.rng_state(),
                "log_window": {"loss_sum": window.detach().cpu(), "count": s.loss_count},
                "config": self.config.to_json(),
                "world_size": d.world_size,
            }
            path = ckpt.save_checkpoint(
                self.run_dir,
                iteration=s.iteration,
                model=s.model,
                ema=s.ema.module if s.ema else None,
                state=state,
                metadata=self._metadata(s.iteration),
                keep=self.config.train.keep_checkpoints,
            )
        d.barrier()
        return path

    def _restore(self, d: Dist, s: _State) -> Path:
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            raise ZSMError(f"nothing to resume: no checkpoint under {self.run_dir}")
        c = ckpt.load_checkpoint(path)
        load_state_strict(s.model, c.model, str(path / "model.safetensors"))
        s.optimizer.load_state_dict(c.state["optimizer"])
        s.scheduler.load_state_dict(c.state["scheduler"])
        if s.scaler.is_enabled() and c.state["scaler"]:  # empty when saved without fp16
            s.scaler.load_state_dict(c.state["scaler"])
        if s.ema is not None:
            s.ema.load_state_dict(
                {k: v.to(d.device) for k, v in (c.ema or s.model.state_dict()).items()}
            )
        ckpt.set_rng_state(c.state["rng"])
        s.iteration, s.samples_seen = c.iteration, int(c.state["samples_seen"])
        window = c.state.get("log_window")  # absent in checkpoints of early versions
        if window is not None:
            s.loss_sum = window["loss_sum"].to(d.device)
            s.loss_count = int(window["count"])
        if d.is_main:
            saved = json.loads(c.state["config"])
            changed = [
                k for k in flat_diff(saved, self.config.to_dict()) if k not in RESUME_SAFE_KEYS
            ]
            if changed:
                print(
                    f"zsm: warning: resuming with changed settings {changed}; "
                    "the run will differ from an uninterrupted one",
                    file=sys.stderr,
                )
            print(f"zsm: resuming from {path} (iteration {c.iteration})", file=sys.stderr)
        return path

    # --- the run -----------------------------------------------------------------------

    def _run(
        self,
        d: Dist,
        *,
        resume: bool,
        stop_after: int | None,
        on_iteration: Callable[[int], None] | None,
    ) -> TrainResult:
        cfg, t = self.config, self.config.train
        if cfg.data.batch_size % d.world_size:
            raise ConfigError(
                f"data.batch_size {cfg.data.batch_size} does not split over {d.world_size} ranks"
            )
        s = self._build_state(d)
        last_ckpt = None
        if resume:
            last_ckpt = self._restore(d, s)
        elif ckpt.latest_checkpoint(self.run_dir) is not None:
            raise ZSMError(
                f"{self.run_dir} already holds checkpoints: continue it with --resume, "
                "or set train.out_dir to start a new run"
            )
        start = s.iteration
        stop = t.iterations if stop_after is None else min(t.iterations, start + stop_after)

        if cfg.data.time_factors is not None and not s.model.config.flow_guided:
            raise ConfigError(
                "data.time_factors needs a network that makes frames at any time step, a "
                f"flow-guided one (model.preset = 'compact-time'); {cfg.model.preset!r} is not"
            )
        # Scored at x4 too: a network made or trained for time steps other than 1/2.
        timed = s.model.config.time_conditioned or cfg.data.time_factors is not None
        dataset = build_training_set(cfg.data, flow=s.model.config.flow_guided)
        batches = RankBatches(
            DataOrder(len(dataset), t.seed),
            global_batch=cfg.data.batch_size,
            rank=d.rank,
            world_size=d.world_size,
            start=start,
            stop=max(start, stop),
            first_sample=s.samples_seen,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=cfg.data.workers,
            pin_memory=d.device.type == "cuda",
            worker_init_fn=ignore_sigint_in_worker if cfg.data.workers else None,
        )
        val_clips = build_validation(cfg.data, seed=t.seed) if d.is_main else []
        val_x4: list[TimedValidationClip] = []
        if timed and val_clips:
            val_x4 = build_validation_at(cfg.data, seed=t.seed, factor=VAL_TIME_FACTOR)
            if not val_x4:
                print(
                    f"zsm: no validation clip is long enough for x{VAL_TIME_FACTOR} "
                    f"(val_psnr_y_x{VAL_TIME_FACTOR}); only x2 is scored",
                    file=sys.stderr,
                )
        if d.distributed:
            s.net = DistributedDataParallel(
                s.model, device_ids=[d.device.index] if d.device.type == "cuda" else None
            )

        log = None
        if d.is_main:
            since = start if resume else None
            log = RunLog(
                self.run_dir, tensorboard=t.tensorboard, resume_from=since, config=cfg.to_json()
            )
            if not resume and val_clips:
                start_scores = {
                    "val_psnr_y_bicubic": bicubic_psnr_y(val_clips),
                    "val_psnr_y_flow_skip": flow_skip_psnr_y(val_clips),
                }
                if val_x4:
                    start_scores["val_psnr_y_x4_flow_skip"] = flow_skip_psnr_y_at(val_x4)
                if t.init:  # the starting point, so that a fine-tune can be judged against it
                    start_scores["val_psnr_y_init"], _ = validate(
                        s.model, val_clips, device=d.device, amp_dtype=s.amp_dtype
                    )
                    if val_x4:
                        start_scores["val_psnr_y_x4_init"], _ = validate_at(
                            s.model, val_x4, device=d.device, amp_dtype=s.amp_dtype
                        )
                log.scalars(0, **start_scores)

        progress = _progress(start, t.iterations, enabled=t.progress and d.is_main)
        stopped: str | None = None
        window_start, window_iters = time.perf_counter(), 0
        try:
            with StopSignals(announce=d.is_main) as signals:
                for batch in loader:
                    self._step(s, *_unpack(batch, dataset, d.device))
                    s.samples_seen = batches.position(s.iteration)
                    window_iters += 1
                    progress.update(1)
                    if s.iteration % t.log_every == 0 or s.iteration == t.iterations:
                        loss = self._log_window(d, s, log, time.perf_counter() - window_start)
                        progress.set_postfix(loss=f"{loss:.4f}", refresh=False)
                        window_start, window_iters = time.perf_counter(), 0
                    if t.val_every and s.iteration % t.val_every == 0 and log and val_clips:
                        scores = self._validate(log, s, val_clips, d.device, val_x4)
                        progress.write(f"iteration {s.iteration}: {scores}")
                    if s.iteration % t.checkpoint_every == 0:
                        last_ckpt = self._save(d, s) or last_ckpt
                    if on_iteration is not None:
                        on_iteration(s.iteration)
                    if d.any(signals.received is not None):
                        stopped = signals.received or "SIGTERM"
                        break
                if stopped is None and s.iteration < t.iterations:
                    stopped = "stop_after"
                if stopped is not None or s.iteration == t.iterations:
                    last_ckpt = self._save(d, s) or last_ckpt
        finally:
            progress.close()
            if log is not None:
                log.close()

        weights = None
        if stopped is None and s.iteration >= t.iterations and d.is_main:
            final = s.ema.module if s.ema is not None else s.model
            weights = save_weights(
                final, self.run_dir / FINAL_WEIGHTS, metadata=self._metadata(s.iteration)
            )
        return TrainResult(s.iteration, self.run_dir, last_ckpt, weights, stopped)

    def _step(
        self,
        s: _State,
        lr_frames: torch.Tensor,
        hr_frames: torch.Tensor,
        flow: torch.Tensor | None = None,
        times: torch.Tensor | None = None,
    ) -> None:
        """One optimiser step; ``flow``: the batch's LR flow, for a flow-guided network;
        ``times``: the times (B, n-1, 1) of the in-between targets, for a time-conditioned
        one."""
        t = self.config.train
        args = (lr_frames,) if flow is None else (lr_frames, flow)
        kwargs = {} if times is None else {"times": times}
        with torch.autocast(
            lr_frames.device.type,
            dtype=s.amp_dtype or torch.float32,
            enabled=s.amp_dtype is not None,
        ):
            output = s.net(*args, **kwargs)
        loss = charbonnier(output.float(), hr_frames, t.loss_eps)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        if t.grad_clip:
            s.scaler.unscale_(s.optimizer)
            torch.nn.utils.clip_grad_norm_(s.params, t.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.scheduler.step()
        if s.ema is not None:
            s.ema.update(s.model)
        s.iteration += 1
        s.loss_sum += loss.detach()  # type: ignore[operator]
        s.loss_count += 1

    def _log_window(self, d: Dist, s: _State, log: RunLog | None, seconds: float) -> float:
        """Log the mean loss since the last log line (over all processes); returns it."""
        count = max(1, s.loss_count)
        loss = float(d.all_reduce_mean(s.loss_sum).item()) / count  # type: ignore[arg-type]
        if not math.isfinite(loss):
            raise ZSMError(
                f"the loss became {loss} at iteration {s.iteration}: lower optim.lr, set "
                "train.grad_clip, or resume from an earlier checkpoint"
            )
        if log is not None:
            log.scalars(
                s.iteration,
                loss=loss,
                lr=s.optimizer.param_groups[0]["lr"],
                s_it=round(seconds / count, 4),
            )
        s.loss_sum.zero_()  # type: ignore[union-attr]
        s.loss_count = 0
        return loss

    def _validate(
        self,
        log: RunLog,
        s: _State,
        clips: list[ValidationClip],
        device: torch.device,
        timed: list[TimedValidationClip] | None = None,
    ) -> dict[str, float]:
        """``val_psnr_y`` (and ``_ema``) on ``clips``; ``val_psnr_y_x4`` on ``timed``."""
        scores: dict[str, float] = {}
        nets = {"": s.model, "_ema": s.ema.module if s.ema else None}
        for suffix, net in nets.items():
            if net is None:
                continue
            name = "val_psnr_y" + suffix
            scores[name], first = validate(net, clips, device=device, amp_dtype=s.amp_dtype)
            if first is not None:
                mid = len(first) // 2  # an interpolated frame when there are 2n-1 = 7
                tag = "samples/" + ("ema" if suffix else "model")
                log.images(s.iteration, tag, torch.stack((first[mid], clips[0][1][mid])))
            if timed:
                scores[f"val_psnr_y_x{VAL_TIME_FACTOR}{suffix}"], _ = validate_at(
                    net, timed, device=device, amp_dtype=s.amp_dtype
                )
        log.scalars(s.iteration, **scores)
        return {k: round(v, 3) for k, v in scores.items()}


def train(
    config: TrainConfig,
    *,
    run_dir: Path | str | None = None,
    resume: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or continue training, ``resume=True``) the model described by ``config``."""
    return Trainer(config, run_dir=run_dir).run(resume=resume, stop_after=stop_after)
