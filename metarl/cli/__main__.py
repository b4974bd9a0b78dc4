"""``python -m metarl.cli``: the ``metarl`` command."""

from metarl.cli.commands import main

main()
