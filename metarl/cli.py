"""The ``metarl`` command: ``train``, ``eval``, ``serve``, ``demo``."""

from __future__ import annotations

import sys

import tyro


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["serve"]:
        # The serving process never needs torch (~220 MB): skip the trainer's imports.
        from metarl_server.app import ServeConfig, serve

        serve(tyro.cli(ServeConfig, args=args[1:], prog="metarl serve"))
        return
    if args[:1] == ["train"]:
        # The family's preset, then --config, then the flags (metarl.config); one line, exit 2,
        # for a refused value.
        from metarl.config import parse_train_args
        from metarl.train import train

        train_cfg = parse_train_args(args[1:], prog="metarl train")
        ckpt = train(train_cfg)
        print(f"wrote checkpoint {train_cfg.out} (policy {ckpt.name} version {ckpt.version})")
        return

    from metarl.demo import DemoConfig
    from metarl.eval import EvalConfig
    from metarl.train import TrainConfig
    from metarl_server.app import ServeConfig

    cfg = tyro.extras.subcommand_cli_from_dict(
        {"train": TrainConfig, "eval": EvalConfig, "serve": ServeConfig, "demo": DemoConfig},
        args=args,
        prog="metarl",
        description="Meta-train, evaluate, serve and try adaptable RL policies.",
    )
    if isinstance(cfg, TrainConfig):
        from metarl.train import train

        ckpt = train(cfg)
        print(f"wrote checkpoint {cfg.out} (policy {ckpt.name} version {ckpt.version})")
    elif isinstance(cfg, EvalConfig):
        from metarl.eval import run_eval

        run_eval(cfg)
    elif isinstance(cfg, ServeConfig):  # (only reached through an abbreviated argv)
        from metarl_server.app import serve

        serve(cfg)
    else:
        from metarl.demo import run_demo

        run_demo(cfg)


if __name__ == "__main__":
    main()
