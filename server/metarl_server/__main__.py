"""``python -m metarl_server [options]``: the same as ``metarl serve [options]``, in a process that
never imports torch (``metarl``'s command line imports the trainer, and with it torch, ~220 MB)."""

from __future__ import annotations

import sys

import tyro

from metarl_server.app import ServeConfig, serve


def main(argv: list[str] | None = None) -> None:
    cfg = tyro.cli(ServeConfig, args=sys.argv[1:] if argv is None else argv, prog="metarl_server")
    serve(cfg)


if __name__ == "__main__":
    main()
