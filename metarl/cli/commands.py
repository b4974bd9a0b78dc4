"""The ``metarl`` command: ``train``, ``eval``, ``serve``, ``demo``, ``publish``.

A user's mistake (a :class:`metarl.errors.UserError`, a refused configuration, an unusable
checkpoint) ends in ONE line on stderr, ``metarl <command>: error: <what and the way out>``, and a
non-zero exit status (2 for usage errors); Ctrl-C ends in one line and status 130. ``--debug``
(anywhere on the command line) or ``METARL_DEBUG=1`` shows the traceback instead. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import tyro

from metarl.errors import UserError, debug_requested, reported


def main(argv: list[str] | None = None) -> None:
    """Runs one ``metarl`` command; see the module doc for how errors end."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != "--debug"]
    prog = "metarl" + (f" {args[0]}" if args[:1] and not args[0].startswith("-") else "")
    with reported(prog, debug):
        _run(args)


def report_checkpoint(out: Path, ckpt: Any) -> None:
    """Says where the checkpoint went, only when this run really wrote it there (an other
    process under torchrun says nothing)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    try:
        manifest = json.loads((Path(out) / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    if (manifest.get("name"), manifest.get("version")) != (ckpt.name, ckpt.version):
        raise UserError(
            f"no checkpoint was written to {out}: the run ended before its first save; run at "
            "least one iteration (--iterations 1 or more)"
        )
    print(f"wrote checkpoint {out} (policy {ckpt.name} version {ckpt.version})")


def _run(args: list[str]) -> None:
    if args[:1] == ["serve"]:
        # The serving process never needs torch (~220 MB): skip the trainer's imports.
        from metarl_server.app import ServeConfig, serve

        serve(tyro.cli(ServeConfig, args=args[1:], prog="metarl serve"))
        return
    if args[:1] == ["train"]:
        # The family's preset, then --config, then the flags (metarl.config); one line, exit 2,
        # for a refused value.
        from metarl.config import parse_train_args
        from metarl.train import prepare_outputs
        from metarl.trainer_state import train_or_exit

        train_cfg = parse_train_args(args[1:], prog="metarl train")
        prepare_outputs(train_cfg)  # an existing run is refused unless --overwrite
        ckpt = train_or_exit(train_cfg)  # Ctrl-C: a resumable state, exit 130
        report_checkpoint(train_cfg.out, ckpt)
        return

    from metarl.demo import DemoConfig
    from metarl.eval import EvalConfig
    from metarl.publish import PublishConfig
    from metarl.train import TrainConfig
    from metarl_server.app import ServeConfig

    cfg = tyro.extras.subcommand_cli_from_dict(
        {
            "train": TrainConfig,
            "eval": EvalConfig,
            "serve": ServeConfig,
            "demo": DemoConfig,
            "publish": PublishConfig,
        },
        args=args,
        prog="metarl",
        description="Meta-train, evaluate, serve and try adaptable RL policies. A mistake ends "
        "in one line on stderr; add --debug (or METARL_DEBUG=1) for the traceback.",
    )
    if isinstance(cfg, TrainConfig):
        from metarl.train import prepare_outputs, train

        prepare_outputs(cfg)
        ckpt = train(cfg)
        report_checkpoint(cfg.out, ckpt)
    elif isinstance(cfg, EvalConfig):
        from metarl.eval import run_eval

        run_eval(cfg)
    elif isinstance(cfg, PublishConfig):
        from metarl.publish import run_publish

        run_publish(cfg)
    elif isinstance(cfg, ServeConfig):  # (only reached through an abbreviated argv)
        from metarl_server.app import serve

        serve(cfg)
    else:
        from metarl.demo import run_demo

        run_demo(cfg)


if __name__ == "__main__":
    main()
