"""``python -m vtsearch.cli``: the same as the ``vtsearch`` command."""

from . import main

main()
