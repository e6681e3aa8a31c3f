"""``python -m zsm``: the same as the ``zsm`` command."""

from zsm.cli import entry

entry()
