"""Resource quantities in the API server's canonical form (`0.5` → `500m`, `1024Mi` → `1Gi`).

A real server stores `resource.Quantity` values re-serialised: what a client
wrote is not what it reads back. An operator that compares desired and actual
objects field by field sees a difference forever unless it writes canonical
quantities, so the stand-in canonicalises the same way (Go's
`Quantity.String()`): binary suffixes stay binary when the value is a whole
number of at least 1024, otherwise the largest power-of-1000 suffix that keeps
the mantissa whole; precision is rounded up to nano units.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_PATTERN = re.compile(r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIX = {exponent: suffix for suffix, exponent in _DECIMAL.items()}


class QuantityError(ValueError):
    pass


def parse_quantity(text: str | float) -> tuple[Fraction, str]:
    """(value, format) where format is 'binary', 'decimal' or 'exponent'."""
    if isinstance(text, bool):
        raise QuantityError(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    if isinstance(text, (int, float)):
        text = repr(text) if isinstance(text, float) else str(text)
    match = _PATTERN.match(text.strip())
    if not match:
        raise QuantityError(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    number, suffix = match.group(1), match.group(2) or ""
    value = Fraction(number)
    if suffix in _BINARY:
        return value * 2 ** _BINARY[suffix], "binary"
    if suffix in _DECIMAL:
        return value * Fraction(10) ** _DECIMAL[suffix], "decimal"
    return value * Fraction(10) ** int(suffix[1:]), "exponent"


def canonical_quantity(text: str | float) -> str:
    value, form = parse_quantity(text)
    value = Fraction(math.ceil(value * 10**9), 10**9)  # the server keeps nano precision, rounding up
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value == 0:
        return "0"
    if form == "binary":
        if value < 1024 or value.denominator != 1:
            form = "decimal"
        else:
            whole = value.numerator
            for exponent in (60, 50, 40, 30, 20, 10):
                if whole % 2**exponent == 0:
                    suffix = {bits: name for name, bits in _BINARY.items()}[exponent]
                    return f"{sign}{whole // 2**exponent}{suffix}"
            return f"{sign}{whole}"
    for exponent in range(18, -12, -3):
        mantissa = value / Fraction(10) ** exponent
        if mantissa.denominator == 1:
            if form == "exponent":
                return f"{sign}{mantissa.numerator}" + (f"e{exponent}" if exponent else "")
            return f"{sign}{mantissa.numerator}{_DECIMAL_SUFFIX[exponent]}"
    raise AssertionError("nano precision always yields a whole mantissa")  # pragma: no cover
