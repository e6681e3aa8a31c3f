"""``zsm ui``: a local web app (Gradio) over :func:`zsm.upscale_video`.

Only :mod:`zsm.ui.app` and :mod:`zsm.ui.server` (at start) import Gradio, the
``ui`` extra; the rest (the queue, the work folder, the service) works and is
tested without it. Start it with ``zsm ui`` or :func:`zsm.ui.server.start`.
"""
