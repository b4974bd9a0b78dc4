"""How policy versions sort: the order operators expect, shared by the server and the trainer.

A model directory holds ``<name>/<version>/`` checkpoints and "the newest version" is the
greatest under :func:`version_key`:

* numbers compare numerically, also inside labels: ``2 < 10``, ``v1.9 < v1.10``;
* timestamps compare in time order whatever their spelling: ``20261129T025848Z`` (the trainer's
  default label), ``2026-11-29T02:58:48Z``, ``2026-11-29T03:58:48+01:00`` and
  ``2026-11-29 02:58:48.5`` are points in time (UTC when no offset is given), and a date alone
  (``2026-11-29``) comes before every time of that day;
* a label that compares equal to another under these rules (``010`` and ``10``) is ordered by
  its text, so the order is total and the same on every machine.

Plain version numbers (1, 2, 3, ...) are smaller than any timestamp, so a directory that
switches from numbers to timestamps keeps the timestamps as the newest.

This module needs nothing but the standard library: the server (which never imports torch),
the SDK and the trainer all use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

__all__ = ["is_timestamp", "newest_version", "sorted_versions", "version_key"]

VersionKey = tuple[tuple[tuple[int, int, str], ...], str]

_TIMESTAMP = re.compile(
    r"""
    (?P<y>\d{4})-?(?P<mo>\d{2})-?(?P<d>\d{2})
    (?:
        [T_\ ]?(?P<h>\d{2}):?(?P<mi>\d{2})(?::?(?P<s>\d{2})(?:[.,](?P<f>\d{1,6})\d*)?)?
        (?P<tz>Z|[+-]\d{2}:?\d{2})?
    )?
    """,
    re.VERBOSE | re.IGNORECASE,
)
_PARTS = re.compile(r"(\d+)")


def _as_time(version: str) -> str | None:
    """The canonical UTC spelling of a timestamp label (fixed width, so it sorts by time), or
    None when ``version`` is not a date or a date and time."""
    m = _TIMESTAMP.fullmatch(version.strip())
    if m is None:
        return None
    g = m.groupdict()
    try:
        t = datetime(
            int(g["y"]), int(g["mo"]), int(g["d"]),
            int(g["h"] or 0), int(g["mi"] or 0), int(g["s"] or 0),
            int((g["f"] or "0").ljust(6, "0")),
        )  # fmt: skip
    except ValueError:  # 12345678 is a number, not a date
        return None
    if g["h"] is None:
        return t.strftime("%Y%m%d")
    tz = g["tz"]
    if tz and tz.upper() != "Z":
        sign = 1 if tz[0] == "+" else -1
        hours, minutes = int(tz[1:3]), int(tz[-2:])
        t -= sign * timedelta(hours=hours, minutes=minutes)
    return t.replace(tzinfo=timezone.utc).strftime("%Y%m%dT%H%M%S.%f")


def is_timestamp(version: str) -> bool:
    """Whether ``version`` is a date, or a date and time (it then sorts in time order)."""
    return _as_time(version) is not None


def version_key(version: str) -> VersionKey:
    """Sort key of a version label: ``sorted(versions, key=version_key)`` is oldest to newest."""
    text = _as_time(version) or version
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _PARTS.split(text) if p)
    return parts, version


def sorted_versions(versions: Iterable[str]) -> list[str]:
    """``versions`` oldest to newest."""
    return sorted(versions, key=version_key)


def newest_version(versions: Iterable[str]) -> str | None:
    """The newest of ``versions``, or None when there are none."""
    return max(versions, key=version_key, default=None)
