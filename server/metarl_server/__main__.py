"""``python -m metarl_server [options]``: the same as ``metarl serve [options]``, in a process that
never imports torch (``metarl``'s command line imports the trainer, and with it torch, ~220 MB)."""

from __future__ import annotations

import sys

import tyro

from metarl.core.errors import debug_requested, reported
from metarl_server.app import ServeConfig, serve


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != "--debug"]
    with reported("metarl_server", debug):  # a user's mistake: one line, as `metarl serve`
        serve(tyro.cli(ServeConfig, args=args, prog="metarl_server"))


if __name__ == "__main__":
    main()
