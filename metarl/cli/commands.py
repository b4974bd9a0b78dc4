"""The ``metarl`` command: ``train``, ``eval``, ``serve``, ``demo``, ``publish``.

A user's mistake (a :class:`metarl.core.errors.UserError`, a refused configuration, an unusable
checkpoint) ends in ONE line on stderr, ``metarl <command>: error: <what and the way out>``, and a
non-zero exit status (2 for usage errors); Ctrl-C ends in one line and status 130. ``--debug``
(anywhere on the command line) or ``METARL_DEBUG=1`` shows the traceback instead. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import tyro

from metarl.core.errors import debug_requested, reported


def main(argv: list[str] | None = None) -> None:
    """Runs one ``metarl`` command; see the module doc for how errors end."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != "--debug"]
    prog = "metarl" + (f" {args[0]}" if args[:1] and not args[0].startswith("-") else "")
    with reported(prog, debug):
        _run(args)


def versions() -> str:
    """``metarl --version``: this metarl's and its parts' versions (distribution metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    parts = ", ".join(f"{d} {of(d)}" for d in ("metarl-client", "metarl-envs"))
    return f"metarl {of('metarl')} ({parts}; Python {sys.version.split()[0]})"


def _run(args: list[str]) -> None:
    if args[:1] in (["--version"], ["-V"]):
        print(versions())
        return
    if args[:1] == ["serve"]:
        # The serving process never needs torch (~220 MB): skip the trainer's imports.
        from metarl_server.app import ServeConfig, serve

        serve(tyro.cli(ServeConfig, args=args[1:], prog="metarl serve"))
        return
    if args[:1] == ["train"]:
        # The family's preset, then --config, then the flags (metarl.training.config); one
        # line, exit 2, for a refused value.
        from metarl.training.config import parse_train_args
        from metarl.training.train import prepare_outputs, report_checkpoint, train_or_exit

        # an existing run is refused unless --overwrite, before the configuration is printed
        train_cfg = parse_train_args(args[1:], prog="metarl train", check=prepare_outputs)
        ckpt = train_or_exit(train_cfg)  # Ctrl-C: a resumable state, exit 130
        report_checkpoint(train_cfg.out, ckpt)
        return

    from metarl.cli.demo import DemoConfig
    from metarl.evaluation.eval import EvalConfig
    from metarl.training.publish import PublishConfig
    from metarl.training.train import TrainConfig
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
        "in one line on stderr; add --debug (or METARL_DEBUG=1) for the traceback. "
        "`metarl --version` prints the versions.",
    )
    if isinstance(cfg, TrainConfig):
        from metarl.training.train import prepare_outputs, report_checkpoint, train

        prepare_outputs(cfg)
        ckpt = train(cfg)
        report_checkpoint(cfg.out, ckpt)
    elif isinstance(cfg, EvalConfig):
        from metarl.evaluation.eval import run_eval

        run_eval(cfg)
    elif isinstance(cfg, PublishConfig):
        from metarl.training.publish import run_publish

        run_publish(cfg)
    elif isinstance(cfg, ServeConfig):  # (only reached through an abbreviated argv)
        from metarl_server.app import serve

        serve(cfg)
    else:
        from metarl.cli.demo import run_demo

        run_demo(cfg)
