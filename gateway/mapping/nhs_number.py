"""NHS number validation (Modulus 11), as published in the NHS Data Dictionary.

Why it matters here: the NHS number is the identifier every agency shares, so a
mistyped one that slipped into the NHS-number system would join two children's
records or split one child's.  A number that fails its check digit is therefore
never stored under ``https://fhir.nhs.uk/Id/nhs-number`` (see the mapping engine).

The algorithm: multiply the first nine digits by 10, 9, ... 2; sum; take the
remainder modulo 11; the check digit is 11 minus that remainder, where 11 means 0
and 10 means the number is invalid.
"""

from __future__ import annotations

__all__ = ["is_valid_nhs_number", "nhs_check_digit", "normalize_nhs_number"]

_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def normalize_nhs_number(value: str) -> str | None:
    """The ten digits of a number written with optional spaces or hyphens
    (``943 476 5919``, ``943-476-5919``), or None if it is not ten digits."""
    digits = value.strip().replace(" ", "").replace("-", "")
    if len(digits) != 10 or not digits.isascii() or not digits.isdigit():
        return None
    return digits


def nhs_check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None when no check digit exists (remainder gives 10)."""
    if len(first_nine) != 9 or not first_nine.isascii() or not first_nine.isdigit():
        raise ValueError("nine digits are needed")
    total = sum(int(d) * w for d, w in zip(first_nine, _WEIGHTS))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid_nhs_number(value: str) -> bool:
    """True when ``value`` is ten digits (spaces/hyphens allowed) with a correct Modulus 11 check digit."""
    digits = normalize_nhs_number(value) if isinstance(value, str) else None
    if digits is None:
        return False
    check = nhs_check_digit(digits[:9])
    return check is not None and check == int(digits[9])
