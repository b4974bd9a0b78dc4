"""Errors a user can fix: the ``metarl`` command prints them as one line and exits.

Library code raises a :class:`UserError` (or a subclass) for a mistake the user made or a
condition outside the program (a missing file, a busy port, a server that is not running). Its
message is ONE line that names the thing and says the way out; ``metarl`` prints it on stderr as
``metarl <command>: error: <message>`` and exits with :attr:`UserError.exit_code`, with no
traceback unless ``--debug`` (or ``METARL_DEBUG=1``). Anything else is an internal bug and keeps
its traceback.

This module imports nothing heavy (no torch, no grpc): the serving process and the torch-free
client-side paths raise these too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

DEBUG_ENV = "METARL_DEBUG"
INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""
_USER_ERRORS = {
    # Errors of other modules that are the user's to fix, and their exit status; looked up only
    # when their module is already imported (the serving process never imports torch).
    ("metarl.training.config", "ConfigError"): 2,
    ("metarl.core.checkpoint", "CheckpointError"): 1,
    ("metarl.training.lineage", "WarmStartError"): 2,
    ("metarl_envs", "UnknownFamily"): 2,  # the light task-family package cannot import this one
}


class UserError(Exception):
    """A mistake the user can fix, or a condition outside the program; exit status 1."""

    exit_code: int = 1


class UsageError(UserError):
    """A wrong command line: an unknown name, a refused value, a missing path; exit status 2."""

    exit_code = 2


class NotFoundError(UsageError):
    """A path, checkpoint or bundled policy that does not exist (a usage error: exit status 2)."""


def debug_requested(args: list[str]) -> bool:
    """``--debug`` among ``args``, or ``METARL_DEBUG`` set (and not 0)."""
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def user_error_status(exc: BaseException) -> int | None:
    """The exit status of a user's mistake, or None for anything else (a bug)."""
    if isinstance(exc, UserError):
        return exc.exit_code
    for (module, name), status in _USER_ERRORS.items():
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return int(getattr(exc, "exit_code", status))
    return None


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line."""
    text = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


@contextlib.contextmanager
def reported(prog: str, debug: bool = False) -> Iterator[None]:
    """Ends a user's mistake raised inside as ``<prog>: error: <message>`` on stderr and its exit
    status, Ctrl-C as ``<prog>: interrupted`` and status 130; with ``debug``, or for any other
    exception (a bug), the exception goes on with its traceback."""
    try:
        yield
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{prog}: interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    except Exception as exc:
        status = None if debug else user_error_status(exc)
        if status is None:
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(status) from None
