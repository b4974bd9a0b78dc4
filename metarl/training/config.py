"""Training configurations: the per-family presets, user config files and their one validation.

Every task family ships its tuned settings as data, ``metarl/presets/<family>.toml``::

    env = "metarl/Navigation2D-v0"     # the family the file belongs to
    [default]                          # what `metarl train --env metarl/Navigation2D-v0` uses
    iterations = 1000
    hidden_sizes = [32, 32]
    [paper]                            # `--preset paper`
    ...

A ``metarl train`` configuration is built in layers, each over the one before:

1. :class:`~metarl.training.options.TrainConfig`'s defaults;
2. the family's preset (``[default]``, or the table ``--preset NAME`` names);
3. a user's file, ``--config FILE``: TOML or JSON with the same keys, whole or partial (it may
   name the ``env``), or a checkpoint's ``manifest.json`` (or its directory) to repeat that run;
4. the command-line flags.

The valid keys are exactly TrainConfig's fields (read from the dataclass, so a new option is a
valid key at once); every value is checked for its type and range by :func:`validate`, for files
and flags alike, and refused with a :class:`ConfigError` whose message is one line naming the
source, the key and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from metarl.core.errors import UsageError, debug_requested
from metarl.training.options import TrainConfig

PRESETS_DIR = Path(__file__).parent.parent / "presets"
DEFAULT_PRESET = "default"
_FILE_KEYS = {"env", "install"}
"""Top-level keys of a preset file besides its preset tables."""


class ConfigError(UsageError, ValueError):
    """A refused configuration: unknown key, wrong type, out-of-range value, unreadable file.

    The message is one line that names the source (file or flag), the key and what is allowed;
    the command line prints it without a traceback (unless ``--debug``) and exits with status 2."""


# -- the keys and what each accepts ------------------------------------------------------------

# Ranges of the numeric options (a key not in TrainConfig is ignored, so a renamed option cannot
# break loading). Every float must also be finite.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "iterations": (lambda v: v >= 1, ">= 1"),
    "meta_batch_size": (lambda v: v >= 1, ">= 1"),
    "episodes_per_task": (lambda v: v >= 1, ">= 1"),
    "max_episode_steps": (lambda v: v is None or v >= 1, ">= 1"),
    "inner_lr": (lambda v: v > 0, "> 0"),
    "inner_steps": (lambda v: v >= 1, ">= 1"),
    "discount": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "gae_lambda": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "baseline_reg": (lambda v: v >= 0, ">= 0"),
    "outer_lr": (lambda v: v > 0, "> 0"),
    "max_kl": (lambda v: v > 0, "> 0"),
    "cg_iters": (lambda v: v >= 1, ">= 1"),
    "cg_damping": (lambda v: v >= 0, ">= 0"),
    "ls_max_steps": (lambda v: v >= 1, ">= 1"),
    "ls_backtrack": (lambda v: 0 < v < 1, "in (0, 1)"),
    "cg_subsample": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "hidden_sizes": (lambda v: all(h >= 1 for h in v), "(each >= 1)"),
    "save_every": (lambda v: v >= 1, ">= 1"),
    "threads": (lambda v: v >= 0, ">= 0 (0: one per core)"),
    "sampler_workers": (lambda v: v >= 0, ">= 0 (0: one per core)"),
}


@cache
def field_types() -> dict[str, Any]:
    """TrainConfig's fields and their (resolved) types, in declaration order."""
    cls = TrainConfig
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _describe_type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in args)
    if origin is tuple:
        plural = {int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(args[0], 'values')}" if args else "a list"
    if origin is dict:
        return "a table of strings" if args == (str, str) else "a table"
    return {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path (a string)",
        type(None): "null",
    }.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (list -> tuple, str -> Path, int -> float), or _Mismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(value, a)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(args) != len(value):
            raise _Mismatch
        return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        kt, vt = args or (Any, Any)
        return {_coerce(k, kt): _coerce(v, vt) for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _Mismatch
    if tp is Any:
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _Mismatch
    return value  # a type this module does not know: the dataclass takes it as it is


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def validate(values: dict[str, Any], source: str, *, flags: bool = False) -> dict[str, Any]:
    """Checks and converts a (partial) configuration; returns the values with TrainConfig's types.

    ``source`` names where the values come from (a file, or "preset X"); ``flags``: they came
    from the command line, so errors name ``--the-flag``. Raises :class:`ConfigError`."""
    known = field_types()
    out: dict[str, Any] = {}
    for key, value in values.items():
        # "--inner-lr -1" on the command line; "my.toml: inner_lr = -1" in a file.
        name = f"{_flag(key)} {_cli(value)}" if flags else f"{source}: {key} = {_show(value)}"
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"{source}: unknown key {key!r} ({hint}the keys are `metarl train`'s options with "
                "underscores, listed by `metarl train --help`)"
            )
        tp = known[key]
        try:
            v = _coerce(value, tp)
        except _Mismatch:
            raise ConfigError(
                f"{name}: must be {_describe_type(tp)}"
                + ("" if flags else f" (got {_toml_type(value)})")
            ) from None
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{name}: must be a finite number")
        if key in _RANGES:
            ok, allowed = _RANGES[key]
            if not ok(v):
                what = _describe_type(tp)
                raise ConfigError(f"{name} is out of range: must be {what} {allowed}")
        if key == "env":
            _check_env(v, name)
        out[key] = v
    return out


def _show(value: Any) -> str:
    """A value as a config file spells it."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    return repr(value)


def _cli(value: Any) -> str:
    """A value as the command line spells it."""
    if isinstance(value, (list, tuple)):
        return " ".join(_cli(v) for v in value)
    return str(value)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _check_env(env_id: str, name: str) -> None:
    from metarl import envs

    registered = envs.registered_families()
    if env_id in registered:
        return
    preset_file = preset_files().get(env_id)
    if preset_file is not None:
        install = _read_toml(preset_file).get("install", "")
        raise ConfigError(
            f"{name}: this family is not available in this install"
            + (f" (it needs `{install}`)" if install else "")
        )
    close = difflib.get_close_matches(env_id, registered, n=1, cutoff=0.6)
    raise ConfigError(
        f"{name}: unknown task family ("
        + (f"did you mean {close[0]!r}? " if close else "")
        + f"registered: {', '.join(registered)})"
    )


# -- preset files -------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


@cache
def preset_files() -> dict[str, Path]:
    """Each family with presets -> its file in ``metarl/presets/``."""
    out: dict[str, Path] = {}
    for path in sorted(PRESETS_DIR.glob("*.toml")):
        env = _read_toml(path).get("env")
        if not isinstance(env, str):
            raise ConfigError(f'{path}: a preset file needs a top-level env = "metarl/..."')
        out[env] = path
    return out


def preset_names(env_id: str) -> list[str]:
    """The named presets of a family (``default`` first), or [] for a family without a file."""
    path = preset_files().get(env_id)
    if path is None:
        return []
    names = [k for k, v in _read_toml(path).items() if isinstance(v, dict)]
    return sorted(names, key=lambda n: (n != DEFAULT_PRESET, n))


def load_preset(env_id: str, name: str = DEFAULT_PRESET) -> dict[str, Any]:
    """The validated values of preset ``name`` of the family ``env_id`` (with its ``env``).

    A family without a preset file has only an empty ``default``."""
    path = preset_files().get(env_id)
    if path is None:
        if name == DEFAULT_PRESET:
            return {"env": env_id}
        raise ConfigError(
            f"--preset {name}: {env_id} has no presets (only metarl/presets/*.toml families do: "
            f"{', '.join(preset_files())})"
        )
    data = _read_toml(path)
    for key, value in data.items():
        if not isinstance(value, dict) and key not in _FILE_KEYS:
            raise ConfigError(
                f"{path}: top-level key {key!r}: a preset file holds env, install and preset "
                "tables only"
            )
    names = preset_names(env_id)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        raise ConfigError(
            f"--preset {name}: {env_id} has no such preset ("
            + (f"did you mean {close[0]!r}? " if close else "")
            + f"its presets: {', '.join(names)})"
        )
    table = dict(data[name])
    if table.get("env", env_id) != env_id:
        raise ConfigError(f"{path} [{name}]: env must be the file's, {env_id!r}")
    table.pop("env", None)  # (whether the family is installed is checked where it is chosen)
    return {"env": env_id, **validate(table, f"{path} [{name}]")}


# -- user files and checkpoint manifests --------------------------------------------------------


def read_config_file(path: Path) -> dict[str, Any]:
    """The validated values of a user's ``--config``: TOML, JSON, or a checkpoint's manifest
    (``manifest.json`` or the checkpoint directory), whose recorded configuration is used."""
    if path.is_dir():
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise ConfigError(
                f"--config {path}: a directory must be a checkpoint (it has no manifest.json); "
                "pass a .toml or .json file or a checkpoint written by `metarl train`"
            )
        path = manifest
    if not path.exists():
        raise ConfigError(f"--config {path}: no such file")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must hold a JSON object of `metarl train` options")
        if "format_version" in data and "params_sha256" in data:  # a checkpoint's manifest
            config = data.get("training", {}).get("config")
            if not isinstance(config, dict):
                raise ConfigError(
                    f"{path}: this checkpoint records no training configuration (written by an "
                    "older metarl); pass its options as flags or in a .toml file"
                )
            data = config
    else:
        data = _read_toml(path)
    return validate(data, str(path))


def to_dict(cfg: Any) -> dict[str, Any]:
    """The whole configuration as JSON values (paths as strings, tuples as lists), in field
    order: what the checkpoint's manifest records and ``--config`` reads back."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


# -- the command line ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    """A configuration and where its values came from."""

    config: TrainConfig
    preset: str | None
    """``<file> [<name>]`` of the preset used, or None for a family without presets."""
    file: Path | None
    flags: tuple[str, ...]
    """Options whose value the command line changed."""

    def describe(self) -> str:
        """A header line (the layers) and the whole configuration, ``key=value`` wrapped."""
        layers = [self.preset or "TrainConfig defaults"]
        if self.file is not None:
            layers.append(str(self.file))
        return describe(self.config, layers, self.flags)


def describe(cfg: TrainConfig, layers: Sequence[str], flags: Sequence[str] = ()) -> str:
    """``configuration (LAYER < ... < flags --a --b):`` and every option, ``key=value`` wrapped
    (what ``metarl train`` prints on stderr before it starts)."""
    layers = [*layers, *(["flags " + " ".join(_flag(k) for k in flags)] if flags else [])]
    values = " ".join(f"{k}={_compact(v)}" for k, v in to_dict(cfg).items())
    body = textwrap.fill(
        values, width=100, initial_indent="  ", subsequent_indent="  ",
        break_long_words=False, break_on_hyphens=False,  # a path stays whole, to copy
    )  # fmt: skip
    return f"configuration ({' < '.join(layers)}):\n{body}"


def _compact(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(str(x) for x in v) or "[]"
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    return str(v) if v != "" else "''"


_PRESET_HELP = (
    "Named preset of the env's family (metarl/presets/<family>.toml), applied over TrainConfig's "
    "defaults: `default`, or e.g. `paper` (the MAML paper's settings) for Navigation2D and "
    "HalfCheetahVel; an unknown name lists the family's presets."
)
_CONFIG_HELP = (
    "A TOML or JSON file of these options (underscores; whole or partial; it may set `env`) "
    "applied over the preset, or a checkpoint (its directory or manifest.json) to repeat its "
    "run. Flags override both. The defaults shown here include the preset and the file."
)


def _pre_parse(argv: Sequence[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for opt in ("--env", "--preset", "--config"):
        pre.add_argument(opt)
    try:
        known, _ = pre.parse_known_args(list(argv))
    except (argparse.ArgumentError, SystemExit):  # `--env` without a value: tyro reports it
        return argparse.Namespace(env=None, preset=None, config=None)
    return known


def resolve(argv: Sequence[str], prog: str = "metarl train") -> Resolved:
    """Parses ``metarl train``'s arguments into a validated configuration (see the module doc).

    Raises :class:`ConfigError`; tyro itself exits for malformed flags and ``--help``."""
    import tyro

    pre = _pre_parse(argv)
    file_values: dict[str, Any] = {}
    config_path = Path(pre.config) if pre.config else None
    if config_path is not None:
        file_values = read_config_file(config_path)
    env = pre.env or file_values.get("env") or TrainConfig.env
    if pre.env:
        validate({"env": pre.env}, "command line", flags=True)
    preset_name = pre.preset or DEFAULT_PRESET
    preset_values = load_preset(env, preset_name)
    path = preset_files().get(env)
    preset_label = None if path is None else f"{_shown_path(path)} [{preset_name}]"
    base = dataclasses.replace(TrainConfig(), **{**preset_values, **file_values})

    # `--preset` and `--config` were read above; declaring them here puts them in `--help`.
    train_args = dataclasses.make_dataclass(
        "TrainArgs",
        [
            ("train", Annotated[TrainConfig, tyro.conf.arg(name="")]),
            ("preset", Annotated[str, tyro.conf.arg(help=_PRESET_HELP)], DEFAULT_PRESET),
            ("config", Annotated[Path | None, tyro.conf.arg(help=_CONFIG_HELP)], None),
        ],
    )
    train_args.__doc__ = TrainConfig.__doc__
    parsed = tyro.cli(
        train_args,
        args=list(argv),
        prog=prog,
        default=train_args(train=base, preset=preset_name, config=config_path),
    )
    cfg = parsed.train
    changed = tuple(
        f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name)
    )
    validate({k: getattr(cfg, k) for k in changed}, "command line", flags=True)
    return Resolved(cfg, preset_label, config_path, changed)


def _shown_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return f"metarl/presets/{path.name}"


def parse_train_args(
    argv: Sequence[str],
    prog: str = "metarl train",
    check: Callable[[TrainConfig], None] | None = None,
) -> TrainConfig:
    """:func:`resolve` for a command: a refused configuration is one line on stderr and exit
    status 2; the effective configuration is printed on stderr (by the first process only),
    after ``check`` (the refusal of an existing ``--out``: a mistake fails fast, before the
    dump)."""
    try:
        resolved = resolve(argv, prog)
    except ConfigError as exc:
        if debug_requested([*argv, *sys.argv[1:]]):  # (`metarl` strips --debug from argv)
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if check is not None:
        check(resolved.config)
    # (a resumed run's own configuration is printed once it is read: trainer_state.resolve_resume)
    if int(os.environ.get("RANK", "0")) == 0 and resolved.config.resume is None:
        print(resolved.describe(), file=sys.stderr, flush=True)
    return resolved.config
