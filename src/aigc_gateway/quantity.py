"""Kubernetes resource quantities ("500m", "4Gi", "1e3"), parsed exactly as the apiserver's grammar does.

Hand-written because the only Python implementation lives in the synchronous
`kubernetes` client, a large dependency for a dozen lines of grammar.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?P<suffix>[a-zA-Z]*|[eE][+-]?[0-9]+)$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal("1e3"),
            "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"), "P": Decimal("1e15"), "E": Decimal("1e18")}
GIB = 2**30
INT32_MAX = 2**31 - 1  # the API's int32 fields (gpu_count, gpu_memory_gib, port...) hold no more
_PLAIN = re.compile(r"^\+?[0-9]+$")


class QuantityError(ValueError):
    pass


def parse_quantity(value: object) -> Decimal:
    """The quantity's value in base units; :class:`QuantityError` when it is not a Kubernetes quantity."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"{value!r} is not a quantity")
        return Decimal(repr(value))
    if not isinstance(value, str):
        raise QuantityError(f"{value!r} is not a quantity")
    match = _QUANTITY.match(value.strip())
    if not match or value != value.strip():
        raise QuantityError(f"{value!r} is not a quantity (examples: 2, 500m, 4Gi)")
    suffix = match["suffix"]
    try:
        number = Decimal(match["number"])
    except InvalidOperation:
        raise QuantityError(f"{value!r} is not a quantity") from None
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    if suffix[:1] in ("e", "E") and suffix[1:].lstrip("+-").isdigit():
        return number * Decimal(10) ** int(suffix[1:])
    raise QuantityError(f"{value!r} has an unknown unit {suffix!r} (use m, k, M, G, Ki, Mi, Gi…)")


def whole_number(value: object) -> int:
    """A quantity that must be a non-negative whole number of units (``nvidia.com/gpu``, ``aliyun.com/gpu-mem``)."""
    amount = parse_quantity(value)
    if amount < 0 or amount != amount.to_integral_value():
        raise QuantityError(f"{value!r} is not a whole number")
    return int(amount)


def plain_count(value: object) -> int:
    """A count of whole units written as a plain number (``2``, ``"2"``), as ``nvidia.com/gpu`` and
    ``aliyun.com/gpu-mem`` are: a unit suffix is refused, not converted. Kubernetes would read
    ``aliyun.com/gpu-mem: 3Gi`` as 3221225472 units of GPU memory, which no admin means."""
    if isinstance(value, str) and not _PLAIN.match(value):
        parse_quantity(value)  # the grammar's own message for what is no quantity at all
        raise QuantityError(f"{value!r} is not a plain number: write the count without a unit or exponent")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a Struct (JSON) number
    if isinstance(value, float):
        raise QuantityError(f"{value!r} is not a whole number")
    return whole_number(value)
