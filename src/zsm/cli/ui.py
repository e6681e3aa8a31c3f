"""``zsm ui``: the local web app (Gradio) for upscaling without a terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zsm.cli.args import int_at_least, int_between, positive_float


def register(sub: argparse._SubParsersAction) -> None:
    from zsm.ui.config import DEFAULT_KEEP_MINUTES, DEFAULT_MAX_UPLOAD_MB

    p = sub.add_parser(
        "ui",
        help="start the web app (upload a video, upscale it, compare, download)",
        description="Start a local web app (Gradio) to upscale videos from a browser: "
        "upload or pick the sample, choose the options, watch the progress, compare the "
        'result with bicubic, download it. Needs the extra: pip install -e ".[ui]".',
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 lets "
        "anyone on the network use the app)",
    )
    p.add_argument(
        "--port", type=int_between(1, 65535), help="port (default: the first free one from 7860)"
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        help="folder for uploads and results (default: a new temporary folder, removed "
        "when the app stops)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help=f"largest upload accepted (default {DEFAULT_MAX_UPLOAD_MB:g} MB)",
    )
    p.add_argument(
        "--keep-minutes",
        type=positive_float,
        default=DEFAULT_KEEP_MINUTES,
        metavar="M",
        help=f"remove uploads and results after M minutes (default {DEFAULT_KEEP_MINUTES:g})",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME|PATH",
        help="weights to offer besides the bundled ones (repeatable; the first is the default)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="default device (auto, cpu, cuda, cuda:N, mps; default auto); one job runs at "
        "a time per device",
    )
    p.add_argument("--threads", type=int_at_least(1), help="CPU threads per job")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from zsm.ui.config import UiSettings
    from zsm.ui.server import is_loopback, start

    settings = UiSettings(
        work_dir=args.work_dir,
        max_upload_mb=args.max_upload_mb,
        keep_minutes=args.keep_minutes,
        weights=tuple(args.weights),
        device=args.device,
        threads=args.threads,
    )
    if not is_loopback(args.host):
        print(
            f"zsm ui: warning: listening on {args.host}: anyone who can reach this machine "
            "can use the app and upload files to it",
            file=sys.stderr,
        )
    app = start(settings, host=args.host, port=args.port)
    print(f"zsm ui: open {app.url} in a browser (Ctrl-C stops)", flush=True)
    print(f"zsm ui: uploads and results in {app.service.work.root}", flush=True)
    try:
        app.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the usual way to stop a server
        print("zsm ui: stopped", file=sys.stderr)
    finally:
        app.close()
    return 0
