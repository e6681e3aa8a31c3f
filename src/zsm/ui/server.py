"""Start and stop the web app: the work folder, Gradio's settings, the HTTP server.

:func:`start` returns a :class:`RunningApp` (the CLI waits on it; tests use it in
process and close it). Gradio is imported here, after ``GRADIO_TEMP_DIR`` points
at the app's work folder, so that uploads and Gradio's own cache land there.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import threading
from dataclasses import dataclass
from typing import Any

from zsm.errors import ZSMError
from zsm.ui.config import UiSettings
from zsm.ui.service import UpscaleService

LOOPBACK = "127.0.0.1"
INSTALL_HINT = 'the web app needs Gradio, which is not installed: pip install -e ".[ui]"'


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host`` (``127.x``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@dataclass
class RunningApp:
    """A launched app: its URL, the Gradio Blocks and the service behind it."""

    url: str
    blocks: Any  # gradio.Blocks
    service: UpscaleService

    def wait(self) -> None:
        """Block until Ctrl-C or SIGTERM (both raise KeyboardInterrupt in the CLI)."""
        threading.Event().wait()

    def close(self) -> None:
        """Stop the server, cancel the jobs, remove the work folder if the app made it."""
        try:
            self.blocks.close(verbose=False)
        finally:
            self.service.close()


def start(settings: UiSettings, *, host: str = LOOPBACK, port: int | None = None) -> RunningApp:
    """Launch the app on ``host`` (``port`` None: the first free one from 7860)."""
    spec = importlib.util.find_spec("gradio")
    if spec is None or spec.origin is None:  # None: a stray gradio/ folder, not the package
        raise ZSMError(INSTALL_HINT)
    service = UpscaleService(settings)
    try:
        # Before Gradio is imported: it reads both then, and again per Blocks and launch.
        os.environ["GRADIO_TEMP_DIR"] = str(service.work.root)
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no calls home: works offline
        import gradio as gr
        import gradio.routes

        # routes.py keeps the folder of its first import for a folder it makes at each
        # launch; a second app in one process (the tests) would write into the first's.
        gradio.routes.DEFAULT_TEMP_DIR = str(service.work.root)

        from zsm.ui.app import build_app

        blocks = build_app(service)
        blocks.queue()
        # System fonts: the default theme would ask Google Fonts, unreachable offline.
        theme = gr.themes.Default(
            font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        )
        try:
            _, url, _ = blocks.launch(
                server_name=host,
                server_port=port,
                prevent_thread_lock=True,
                quiet=True,
                max_file_size=settings.max_upload_bytes,
                theme=theme,
                ssr_mode=False,
                share=False,
            )
        except OSError:
            # Gradio's message names its environment variable; ours names the option.
            where = f"{host}:{port}" if port else f"{host}, ports 7860-7959,"
            raise ZSMError(
                f"cannot listen on {where}: in use or not allowed; choose another --port"
            ) from None
    except BaseException:
        service.close()
        raise
    return RunningApp(url=url.rstrip("/") + "/", blocks=blocks, service=service)
