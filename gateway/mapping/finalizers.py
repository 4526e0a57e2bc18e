"""Finalizers: cross-field logic that is code, named from the YAML (``finalize: [...]``).

Why code: "start from TQ1-7, else SCH-11.4, else AIS-4; end from the end field,
else start plus a duration in one of four places; an instant needs a time" is
an algorithm, not a field map.  The rules collect the raw ingredients into
scratch keys (``_start``, ``_end``, ``_minutes``); a finalizer turns them into
FHIR elements and says, with an HL7 location, what it could not do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable

from gateway.mapping.context import MapContext
from gateway.mapping.rules import Builder
from gateway.mapping.timestamps import shift_fhir_instant

__all__ = ["FINALIZERS"]


def _origin_at(ctx: MapContext, b: Builder, key: str, fallback: tuple) -> None:
    origin = b.origins.get(key) or fallback
    segment, sequence, field_no, component = (tuple(origin) + (None, None, None, None))[:4]
    ctx.at(segment or fallback[0], sequence or 1, field_no, None, component)


def _appointment_timing(b: Builder, ctx: MapContext) -> None:
    """start/end/minutesDuration from the scratch values the rules collected.

    ``_start``/``_end`` are dateTimes from TQ1-7/8, else SCH-11.4/11.5, else AIS-4;
    ``_minutes`` a duration from TQ1-6, SCH-11.3, SCH-9/10 or AIS-7/8.  An explicit
    end wins over a duration (minutesDuration is then end - start); without an end,
    end = start + duration.  An instant needs a time: a date-only start is kept in
    ``requestedPeriod`` with a warning rather than invented as midnight.
    """
    r = b.resource
    start, end, minutes = r.pop("_start", None), r.pop("_end", None), r.pop("_minutes", None)
    fallback = ("SCH", 1, 11, None)
    date_only = bool(start) and "T" not in start
    if date_only:
        _origin_at(ctx, b, "_start", fallback)
        ctx.issue("W", 102, f"{ctx.location} start {start!r} has no time of day; Appointment.start needs one, "
                            "so the date is kept in Appointment.requestedPeriod")
        period = {"start": start}
        if end:
            period["end"] = end
        r["requestedPeriod"] = [period]
        start = end = None
    if end and "T" not in end:
        _origin_at(ctx, b, "_end", fallback)
        ctx.issue("W", 102, f"{ctx.location} end {end!r} has no time of day; Appointment.end left out")
        end = None
    if start:
        r["start"] = start
        if end:
            if datetime.fromisoformat(end) < datetime.fromisoformat(start):
                _origin_at(ctx, b, "_end", fallback)
                ctx.issue("W", 102, f"{ctx.location} end {end!r} is before the start {start!r}; end left out")
            else:
                r["end"] = end
        if "end" in r:  # an explicit end is authoritative over a duration field
            delta = datetime.fromisoformat(r["end"]) - datetime.fromisoformat(start)
            minutes = delta.total_seconds() / 60
        elif minutes:
            r["end"] = shift_fhir_instant(start, minutes)
    elif end:
        _origin_at(ctx, b, "_end", fallback)
        ctx.issue("W", 102, f"{ctx.location} end {end!r} has no start; Appointment.end left out")
    if minutes and round(minutes) >= 1:
        r["minutesDuration"] = int(round(minutes))
    status = r.get("status")
    if date_only or status in ("proposed", "cancelled", "waitlist", "entered-in-error"):
        return
    if "start" not in r or "end" not in r:
        _origin_at(ctx, b, "_start", fallback)
        missing = "end time or duration" if "start" in r else "start time"
        ctx.issue("W", 101, f"the appointment has no {missing} (TQ1-7/TQ1-8, SCH-11.4/.5, AIS-4, SCH-9 or "
                            f"AIS-7); FHIR expects both start and end for a {status} appointment")


FINALIZERS: dict[str, Callable[[Builder, MapContext], None]] = {
    "appointment-timing": _appointment_timing,
}
