"""Errors a user can cause and fix.

The command line prints any :class:`ZSMError` as one line naming the cause and
exits with status 2; other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations


class ZSMError(Exception):
    """A failure caused by the user's input, files, options or environment."""


class InputError(ZSMError):
    """The input video, frame folder or data set cannot be used."""


class OutputError(ZSMError):
    """The output cannot be written (missing folder, permissions, disk full)."""


class WeightsError(ZSMError):
    """A weights file or name cannot be used (unknown, corrupt, mismatched)."""


class Cancelled(ZSMError):
    """A run stopped on request (its ``cancel`` event was set); nothing was written."""
