"""The page: a Gradio Blocks app over :class:`~zsm.ui.service.UpscaleService`.

Events (``api_name`` marks what ``gradio_client`` can call):

* ``upscale`` (API): the upload and options in, the result video's path out; the
  page's bar shows frames done, frames/s and time left from the job's progress.
* ``cancel`` (API): cancels the calling session's waiting or running job.
* private: the input's description, the sample clip, and after each job the status
  line, the download, the side-by-side video and the contact sheet.

Errors a user can cause arrive as :class:`zsm.ZSMError` and are shown as their
one line (``gr.Error``), the same text ``zsm upscale`` prints after ``zsm: error:``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from zsm.errors import ZSMError
from zsm.options import DEFAULT_TIME_FACTOR, DEFAULTS, ENSEMBLE_PASSES, PRECISIONS
from zsm.ui import text
from zsm.ui.jobs import JobState
from zsm.ui.service import UpscaleService

POLL_SECONDS = 0.25  # how often a waiting request reads its job's progress

INTRO = """# zsm: make a video 4x larger and 2x smoother
Upload a short, small video (or try the sample), check the options, press **Upscale**.
The result plays on the right, beside bicubic + frame repeat, and can be downloaded.
"""


def build_app(service: UpscaleService) -> gr.Blocks:
    """The Blocks of the page; launch it with :func:`zsm.ui.server.start`."""
    with gr.Blocks(title="zsm: upscale a video", analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                video = gr.Video(
                    label="Video to upscale", sources=["upload"], elem_id="zsm-input", height=260
                )
                sample = gr.Button("Use the sample clip (Big Buck Bunny, 2.6 s)", size="sm")
                info = gr.Markdown(elem_id="zsm-info")
                with gr.Row():
                    start = gr.Button("Upscale", variant="primary", elem_id="zsm-start")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="zsm-cancel")
                with gr.Accordion("Options", open=True):
                    weights = gr.Dropdown(
                        choices=list(service.weights),
                        value=next(iter(service.weights)),
                        label="Weights",
                    )
                    time_factor = gr.Radio(
                        choices=text.TIME_FACTOR_CHOICES,
                        value=DEFAULT_TIME_FACTOR,
                        label="Frame rate",
                        info="3x, 4x and 8x need time-step weights (zsm-compact-time)",
                    )
                    precision = gr.Radio(
                        choices=list(PRECISIONS),
                        value=DEFAULTS.precision,
                        label="Precision",
                        info="fp16 or bf16: faster on a GPU; auto: what was measured "
                        "fastest for the device (a CPU computes fp16 in fp32)",
                    )
                    ensemble = gr.Dropdown(
                        choices=list(ENSEMBLE_PASSES),
                        value=DEFAULTS.ensemble,
                        label="Self-ensemble passes",
                        info="N passes: N times slower, a little sharper",
                    )
                    crf = gr.Slider(
                        0,
                        51,
                        value=DEFAULTS.crf,
                        step=1,
                        label="Quality (crf)",
                        info="lower is better and larger",
                    )
                    device = gr.Dropdown(
                        choices=service.devices,
                        value=service.devices[0],
                        label="Device",
                        visible=len(service.devices) > 1,
                    )
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="zsm-status")
                result = gr.Video(
                    label="Result", interactive=False, elem_id="zsm-result", height=320
                )
                download = gr.DownloadButton(
                    "Download the result", visible=False, elem_id="zsm-download"
                )
                # Captions above, not labels on top: a label would cover the labels that
                # the comparison has burnt into its top-left corner.
                gr.Markdown("**Side by side**: bicubic + frame repeat (left), zsm (right)")
                side = gr.Video(show_label=False, interactive=False, elem_id="zsm-side")
                gr.Markdown("**Contact sheet**: bicubic, zsm, zsm's new in-between frame")
                sheet = gr.Image(
                    show_label=False, type="filepath", interactive=False, elem_id="zsm-sheet"
                )

        def describe(upload: str | None, factor: int) -> str:
            if not upload:
                return ""
            try:
                return service.inspect(upload, int(factor))
            except ZSMError as exc:
                return f"**zsm: error:** {exc}"

        def clear() -> tuple[Any, ...]:
            return "", None, gr.DownloadButton(visible=False), None, None

        def upscale(
            upload: str | None,
            weights: str,
            time_factor: int,
            precision: str,
            ensemble: int,
            crf: int,
            device: str,
            request: gr.Request,
            progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's injection idiom
        ) -> str:
            try:
                job = service.submit(
                    request.session_hash,
                    upload,
                    weights=weights,
                    device=device,
                    precision=precision,
                    ensemble=ensemble,
                    time_factor=time_factor,
                    crf=crf,
                )
            except ZSMError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            while not job.wait(POLL_SECONDS):
                if job.state == JobState.QUEUED:
                    progress(None, desc=text.waiting_line(service.ahead(job)))
                elif job.progress is None:
                    progress(None, desc="starting: loading the weights")
                else:
                    p = job.progress
                    progress((p.done, p.total), desc=text.progress_line(p), unit="frames")
            if job.state == JobState.CANCELLED:
                raise gr.Error(job.error or "cancelled", title="Cancelled", print_exception=False)
            if job.state != JobState.DONE:
                raise gr.Error(job.error or "failed", print_exception=False)
            return str(job.result.output)

        def finish(request: gr.Request, progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:  # noqa: B008
            job = service.latest(request.session_hash)
            hidden = gr.DownloadButton(visible=False)
            if job is None:  # no job yet in this session (refusals are failed jobs)
                return "", hidden, None, None
            if job.state == JobState.CANCELLED:
                return "Cancelled: nothing was kept.", hidden, None, None
            if job.state != JobState.DONE:
                return f"**zsm: error:** {job.error}", hidden, None, None
            r = job.result
            line = (
                f"Done: {r.output_frames} frames, {r.width}x{r.height} at "
                f"{text.rate(r.fps)} fps, in {text.clock(r.seconds)}."
            )
            button = gr.DownloadButton(value=str(r.output), visible=True)
            progress(None, desc="making the side-by-side comparison")
            try:
                comparison = service.compare(job)
            except ZSMError as exc:
                return f"{line}  \n**zsm: error:** {exc}", button, None, None
            if comparison is None:
                line += " (The comparison needs the 2x frame rate.)"
                return line, button, None, None
            return line, button, str(comparison.side_by_side), str(comparison.contact_sheet)

        def stop(request: gr.Request) -> str:
            job = service.cancel(request.session_hash)
            return "Cancelling..." if job is not None else "Nothing to cancel."

        private: dict[str, Any] = {"api_visibility": "private", "concurrency_limit": None}
        video.change(describe, [video, time_factor], info, **private)
        time_factor.change(describe, [video, time_factor], info, **private)
        sample.click(lambda: str(service.sample), None, video, **private)
        # Requests only wait on their job; JobQueue runs one job per device at a time.
        run = start.click(clear, None, [status, result, download, side, sheet], **private).then(
            upscale,
            [video, weights, time_factor, precision, ensemble, crf, device],
            result,
            api_name="upscale",
            concurrency_limit=None,
        )
        # Gradio 6 skips a .then() after an error; the outcome is shown either way.
        run.success(finish, None, [status, download, side, sheet], **private)
        run.failure(finish, None, [status, download, side, sheet], **private)
        cancel.click(stop, None, status, api_name="cancel", concurrency_limit=None)

        def forget(request: gr.Request) -> None:
            # A closed tab cannot see its result: free the device for the next job.
            service.cancel(request.session_hash)

        app.unload(forget)
    return app
