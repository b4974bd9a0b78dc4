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


class UserError(Exception):
    """A mistake the user can fix, or a condition outside the program; exit status 1."""

    exit_code: int = 1


class UsageError(UserError):
    """A wrong command line: an unknown name, a refused value, a missing path; exit status 2."""

    exit_code = 2


class NotFoundError(UsageError):
    """A path, checkpoint or bundled policy that does not exist (a usage error: exit status 2)."""
