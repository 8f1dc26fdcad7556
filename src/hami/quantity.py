"""Kubernetes resource quantities (`3000`, `3k`, `2Gi`, `1500m`) as exact integers."""

from __future__ import annotations

import re
from fractions import Fraction

_SUFFIX = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
_PATTERN = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+))?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


# Longer texts and larger exponents are refused before any arithmetic: `1e999999999` would
# otherwise take minutes and gigabytes to compute. (The vendors refuse values over HAMi's limit.)
_MAX_TEXT = 64
_MAX_EXPONENT = 40


class QuantityError(ValueError):
    pass


def parse_quantity(value: object) -> Fraction:
    """The exact value of a quantity; raises QuantityError for anything else."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(value)
    if not isinstance(value, str):
        raise QuantityError(f"{value!r} is not a quantity")
    if len(value) > _MAX_TEXT:
        raise QuantityError(f"{value[:16]!r}... is longer than {_MAX_TEXT} characters, not a quantity")
    match = _PATTERN.match(value.strip())
    if not match:
        raise QuantityError(f"{value!r} is not a number or Kubernetes quantity")
    number, exponent, suffix = match.groups()
    result = Fraction(number) * _SUFFIX[suffix or ""]
    if exponent:
        if abs(int(exponent)) > _MAX_EXPONENT:
            raise QuantityError(f"{value!r}: the exponent is out of range")
        result *= Fraction(10) ** int(exponent)
    return result


def parse_whole(value: object) -> int:
    """A non-negative whole quantity, as device counts, MiB and percentages must be."""
    quantity = parse_quantity(value)
    if quantity < 0:
        raise QuantityError(f"{value!r} is negative")
    if quantity.denominator != 1:
        raise QuantityError(f"{value!r} is not a whole number")
    return int(quantity)


def parse_milli(value: object) -> int:
    """CPU-style quantity in thousandths, rounded up as Kubernetes does (`500m` -> 500, `2` -> 2000)."""
    quantity = parse_quantity(value)
    if quantity < 0:
        raise QuantityError(f"{value!r} is negative")
    milli = quantity * 1000
    return int(milli) if milli.denominator == 1 else int(milli) + 1
