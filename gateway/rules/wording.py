"""Plain-English pieces for Flag.text and Task.description (no jargon, no codes)."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from gateway import codes
from gateway.rules.facts import Appt

MARKER_PHRASES = {
    codes.FLAG_COMPLEX_NEEDS: "child has complex medical needs",
    codes.FLAG_CHILD_PROTECTION_PLAN: "child is on a child protection plan",
    codes.FLAG_LOOKED_AFTER: "child is looked after",
    codes.FLAG_SAFEGUARDING_CONCERN: "a safeguarding concern is recorded",
}


def join(items: Iterable[str]) -> str:
    items = list(dict.fromkeys(i for i in items if i))
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def span(first: datetime | None, last: datetime | None) -> str:
    if first is None or last is None:
        return ""
    days = (last - first).days
    if days < 1:
        return "on one day"
    if days < 45:
        return f"in {plural(days, 'day')}"
    months = max(1, round(days / 30.44))
    return f"in {plural(months, 'month')}"


def services_phrase(appts: list[Appt]) -> str:
    labels = sorted({a.service_label for a in appts})
    return ("at " if len(labels) == 1 else "across ") + join(labels)


def appointment_line(appt: Appt) -> str:
    return f"{appt.service_label}, {appt.day}"


def appointments_summary(appts: list[Appt], what: str) -> str:
    """'3 appointments not brought to in 5 months across a, b and c' / '1 ... (a, 2025-06-02)'."""
    if len(appts) == 1:
        return f"1 appointment {what} ({appointment_line(appts[0])})"
    return f"{plural(len(appts), 'appointment')} {what} {span(appts[0].start, appts[-1].start)} {services_phrase(appts)}"


def markers_phrase(markers: Iterable[str]) -> str:
    return "; ".join(MARKER_PHRASES[m] for m in markers if m in MARKER_PHRASES)
