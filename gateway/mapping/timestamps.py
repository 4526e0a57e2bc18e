"""HL7 v2 timestamps (DTM, TS, DT) to FHIR date, dateTime and instant.

Why a module of its own: timestamps are where feeds silently go wrong.  A
converter that drops the offset, invents seconds it then treats as precise, or
reads a local time as UTC moves a child's appointment by an hour twice a year.
The rules here are therefore strict and small:

- Precision is kept: ``202405`` stays ``2024-05``; ``20240501`` stays a date.
- Offsets are kept as sent: ``+0100`` -> ``+01:00``, ``+00`` -> ``+00:00``.
- FHIR needs seconds and a zone once a time is present, so ``202405011030``
  becomes ``2024-05-01T10:30:00`` plus the offset of the configured zone at that
  local time (DST-aware, zoneinfo; the earlier of two ambiguous times).
- Fractional seconds are kept digit for digit.
- Anything that is not a real calendar date/time raises :class:`ValueError`;
  a date-only value where an instant is needed raises :class:`PrecisionError`
  (a ``ValueError`` subclass) so callers can treat it differently.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = [
    "PrecisionError",
    "hl7_to_fhir_date",
    "hl7_to_fhir_datetime",
    "hl7_to_fhir_instant",
    "hl7_to_utc_instant",
    "parse_fhir_datetime",
    "shift_fhir_instant",
]

# YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZ[ZZ]]  (HL7 DTM; TS component 1 is the same)
_DTM = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?"
    r"(?:([+-])(\d{2})(\d{2})?)?"
)


class PrecisionError(ValueError):
    """The value is a valid date but has no time, and an instant was asked for."""


@lru_cache(maxsize=32)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _format_offset(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _parse(value: str) -> tuple:
    """Split and range-check an HL7 timestamp.  Raises ValueError when it is not one."""
    text = value.strip()
    m = _DTM.fullmatch(text)
    if m is None:
        raise ValueError(f"{value!r} is not an HL7 timestamp (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = m.groups()
    y = int(year)
    if month is not None:
        mo = int(month)
        if not 1 <= mo <= 12:
            raise ValueError(f"{value!r} has month {month}")
        if day is not None:
            try:
                date(y, mo, int(day))
            except ValueError:
                raise ValueError(f"{value!r} has no day {day} in month {month}") from None
    if hour is not None and int(hour) > 23:
        raise ValueError(f"{value!r} has hour {hour}")
    if minute is not None and int(minute) > 59:
        raise ValueError(f"{value!r} has minute {minute}")
    if second is not None and int(second) > 59:
        raise ValueError(f"{value!r} has second {second}")
    if sign is not None:
        if int(off_h) > 14 or (off_m is not None and int(off_m) > 59):
            raise ValueError(f"{value!r} has an impossible UTC offset")
    return year, month, day, hour, minute, second, frac, sign, off_h, off_m


def _offset(year: str, month: str, day: str, hour: str, minute: str, second: str,
            sign: str | None, off_h: str | None, off_m: str | None, tz: str) -> str:
    if sign is not None:
        return f"{sign}{off_h}:{off_m or '00'}"
    local = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0),
                     tzinfo=_zone(tz))
    return _format_offset(local.utcoffset() or timedelta(0))


def hl7_to_fhir_datetime(value: str, tz: str = "Europe/London") -> str | None:
    """An HL7 DTM/TS as a FHIR dateTime, keeping its precision and offset.

    Empty -> None.  Date-only values stay dates (an offset on a date-only value
    is dropped: FHIR dates carry no zone).  A value with a time but no offset is
    read in ``tz``.
    """
    if not value:
        return None
    return _datetime(value, tz)


@lru_cache(maxsize=8192)
def _datetime(value: str, tz: str) -> str:
    """Cached: a message repeats its times (TQ1-7, AIS-4 ...) and clinics repeat their slots;
    zoneinfo look-ups are the slow part.  Errors are raised, never cached."""
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = _parse(value)
    if month is None:
        return year
    if day is None:
        return f"{year}-{month}"
    if hour is None:
        return f"{year}-{month}-{day}"
    offset = _offset(year, month, day, hour, minute, second, sign, off_h, off_m, tz)
    fraction = f".{frac}" if frac else ""
    return f"{year}-{month}-{day}T{hour}:{minute or '00'}:{second or '00'}{fraction}{offset}"


def hl7_to_fhir_date(value: str, tz: str = "Europe/London") -> str | None:
    """An HL7 DT/DTM as a FHIR date (the calendar date as sent; the time is dropped)."""
    if not value:
        return None
    year, month, day, *_ = _parse(value)
    if month is None:
        return year
    if day is None:
        return f"{year}-{month}"
    return f"{year}-{month}-{day}"


def hl7_to_fhir_instant(value: str, tz: str = "Europe/London") -> str | None:
    """An HL7 DTM/TS as a FHIR instant (needs a time; seconds are added when absent).

    Raises :class:`PrecisionError` for a date-only value: an instant cannot say
    "some time that day", and inventing midnight would be a lie.
    """
    if not value:
        return None
    result = hl7_to_fhir_datetime(value, tz)
    if result is None or "T" not in result:
        raise PrecisionError(f"{value!r} has no time of day; an instant needs one")
    return result


def parse_fhir_datetime(value: str) -> datetime:
    """A FHIR dateTime/instant with a time (as produced here) as an aware datetime."""
    return datetime.fromisoformat(value)


def shift_fhir_instant(value: str, minutes: float) -> str:
    """``value`` plus ``minutes``, written with the same UTC offset as ``value``."""
    moved = datetime.fromisoformat(value) + timedelta(minutes=minutes)
    return moved.isoformat()


def hl7_to_utc_instant(value: str, tz: str = "Europe/London") -> str | None:
    """An HL7 timestamp as a fixed-width UTC instant ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

    Used for guard times: a fixed width means two guard times compare correctly as
    strings as well as after parsing.  A date-only value is read as local midnight.
    """
    if not value:
        return None
    return _utc_instant(value, tz)


@lru_cache(maxsize=4096)
def _utc_instant(value: str, tz: str) -> str:
    year, month, day, hour, minute, second, frac, sign, off_h, off_m = _parse(value)
    micro = int((frac or "0").ljust(6, "0"))
    local = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                     int(second or 0), micro)
    if sign is not None:
        delta = timedelta(hours=int(off_h), minutes=int(off_m or 0))
        utc = local - delta if sign == "+" else local + delta
    else:
        utc = local.replace(tzinfo=_zone(tz)).astimezone(timezone.utc)
    return (f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
            f"{utc.second:02d}.{utc.microsecond:06d}Z")
