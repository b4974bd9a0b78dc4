"""Version labels sort as operators expect, in the SDK, the trainer and the server alike."""

from __future__ import annotations

import random

from metarl_client.versions import newest_version, sorted_versions, version_key
from metarl_server import registry


def test_numbers_sort_numerically_also_inside_labels() -> None:
    assert sorted_versions(["10", "2", "1", "9"]) == ["1", "2", "9", "10"]
    assert sorted_versions(["v1.10", "v1.9", "v1.2.3"]) == ["v1.2.3", "v1.9", "v1.10"]


def test_timestamps_sort_in_time_order_whatever_their_spelling() -> None:
    in_time_order = [
        "2026-11-28",  # a date alone: before every time of that day... and after the day before
        "2026-11-29",
        "2026-11-29T02:58:47Z",
        "20261129T025848Z",  # the trainer's default label
        "2026-11-29 02:58:48.5",  # no offset: UTC
        "2026-11-29T03:58:49+01:00",  # 02:58:49 UTC
        "2026-11-29T02:59:00-00:00",
        "20261130T000000Z",
    ]
    shuffled = in_time_order[:]
    random.Random(0).shuffle(shuffled)
    assert sorted_versions(shuffled) == in_time_order
    # Compared as text, the offset spelling would come last and 2026-11-28 first among others.
    assert newest_version(["20261129T025848Z", "2026-11-29T02:00:00-05:00"]) == (
        "2026-11-29T02:00:00-05:00"
    )


def test_numbers_come_before_timestamps_and_the_order_is_total() -> None:
    assert sorted_versions(["20261129T025848Z", "3", "12345678"]) == [
        "3",
        "12345678",  # not a date (month 56): a number
        "20261129T025848Z",
    ]
    # Equal under the rules (leading zero): still a fixed order, by text.
    assert sorted_versions(["10", "010"]) == ["010", "10"]
    assert version_key("10") != version_key("010")
    assert newest_version([]) is None


def test_the_server_registry_uses_the_same_ordering() -> None:
    assert registry.version_key is version_key
