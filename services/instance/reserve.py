"""`spec.reserveGameServerIds`: read ints and range strings, write ints.

kruise-game 1.x stores the list as `[]IntOrString` and rewrites it compressed
(`[1, "4-7"]`); 0.x wrote plain ints. Both are read; the gateway always writes
a sorted list of ints, which every version accepts. A value that is neither is
an error: guessing would risk handing out a reserved id.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_INT = re.compile(r"^\s*(\d+)\s*$")


class ReserveListError(ValueError):
    """The reserve list holds something that is not an id or an `a-b` range."""


def parse(values: Iterable[Any] | None) -> frozenset[int]:
    ids: set[int] = set()
    for item in values or ():
        if isinstance(item, bool):  # bool is an int in Python; never an id
            raise ReserveListError(f"reserveGameServerIds holds {item!r}")
        if isinstance(item, int):
            if item < 0:
                raise ReserveListError(f"reserveGameServerIds holds negative id {item}")
            ids.add(item)
            continue
        if isinstance(item, str):
            if match := _INT.match(item):
                ids.add(int(match.group(1)))
                continue
            if match := _RANGE.match(item):
                low, high = int(match.group(1)), int(match.group(2))
                if low > high:
                    raise ReserveListError(f"reserveGameServerIds holds the empty range {item!r}")
                ids.update(range(low, high + 1))
                continue
        raise ReserveListError(f"reserveGameServerIds holds {item!r}, which is neither an id nor a range")
    return frozenset(ids)


def format_ints(ids: Iterable[int]) -> list[int]:
    """What the gateway writes: sorted ints."""
    return sorted(set(ids))
