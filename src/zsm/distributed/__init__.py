"""Upscaling on a Ray cluster: one long video cut into time segments, or a folder of videos.

``zsm upscale INPUT -o OUTPUT --ray [ADDRESS]`` or ``upscale_video(..., ray="auto")``
(:class:`~zsm.options.UpscaleOptions`). Segments lie on the boundaries of the
single-machine temporal windows (:mod:`~zsm.distributed.segments`), each runs as
a Ray task (:mod:`~zsm.distributed.tasks`) writing a file into the work folder,
which must be on storage every node sees (:mod:`~zsm.distributed.cluster`), and
the driver (:mod:`~zsm.distributed.driver`) joins them with the audio and
subtitles. Nothing here imports Ray until a run asks for it.
"""
