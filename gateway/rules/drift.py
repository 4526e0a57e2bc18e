"""R7: drift (rec. 1.7) — time-based, run by the scheduler (``gateway rules run``).

A WNB on an open WNB Flag is *followed up* by a later appointment with the same
service (a new booking), a completed enquiry Task for it, or a review Task for
the Flag completed after it.  One that is not, ``drift_days`` (14; per service
overridable) after its clock started, escalates the Flag: level 1, then 2 after
another period, and so on (``max_level``).  Its clock starts at the later of the
appointment and the moment the gateway flagged it (a history imported today is
not "late" for the days before anybody could know).

The level is a pure function of the record and the clock, stored on the Flag
(extension escalation-level) and never lowered: re-running, replaying, a second
replica or a restart computes the same level and writes nothing — it cannot
double-fire.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway import codes
from gateway.rules import flags as flag_writer
from gateway.rules import tasks as task_writer
from gateway.rules.context import Evaluation
from gateway.rules.facts import Appt, parse_instant

R7 = "R7-drift"
_NOT_A_BOOKING = ("cancelled", "entered-in-error")


def followed_up(ev: Evaluation, flag: dict, appt: Appt) -> bool:
    for other in ev.record.appointments:
        if other.id != appt.id and other.service_key == appt.service_key and other.start is not None \
                and other.start > appt.start and other.status not in _NOT_A_BOOKING:
            return True
    for task in ev.record.tasks:
        if task.get("status") != "completed":
            continue
        focus = (task.get("focus") or {}).get("reference")
        code = task_writer.task_code(task)
        if code == codes.TASK_WNB_ENQUIRY and focus == appt.ref:
            return True
        if code == codes.TASK_REVIEW_MISSED and focus == f"Flag/{flag['id']}":
            done = parse_instant(task_writer.completed_at(task))
            if done is None or done >= appt.start:
                return True
    return False


def level_for(ev: Evaluation, flag: dict) -> tuple[int, list[Appt]]:
    """(escalation level due now, the WNBs that drifted)."""
    rule = ev.cfg.rule(R7)
    flagged_at = parse_instant((flag.get("period") or {}).get("start")) or ev.now
    by_ref = {a.ref: a for a in ev.record.appointments}
    level, drifted = 0, []
    for ref in flag_writer.evidence_refs(flag):
        appt = by_ref.get(ref)
        if appt is None or appt.start is None or appt.status not in ev.cfg.wnb_statuses:
            continue
        if followed_up(ev, flag, appt):
            continue
        days = ev.cfg.service_setting(appt.service_key, "drift_days", rule["drift_days"])
        started = max(appt.start, flagged_at)
        periods = int((ev.now - started) / timedelta(days=days)) if ev.now > started else 0
        if periods > 0:
            drifted.append(appt)
            level = max(level, periods)
    return min(level, rule["max_level"]), drifted


def due(ev: Evaluation, flag: dict | None) -> int | None:
    """The level to write, or None when the Flag needs no escalation now."""
    if flag is None or flag.get("status") != "active":
        return None
    level, _drifted = level_for(ev, flag)
    return level if level > flag_writer.escalation_level(flag) else None


def next_due(ev: Evaluation, flag: dict) -> datetime | None:  # for docs/tests: when the next step falls due
    rule = ev.cfg.rule(R7)
    current = flag_writer.escalation_level(flag)
    flagged_at = parse_instant((flag.get("period") or {}).get("start")) or ev.now
    by_ref = {a.ref: a for a in ev.record.appointments}
    best = None
    for ref in flag_writer.evidence_refs(flag):
        appt = by_ref.get(ref)
        if appt is None or appt.start is None or followed_up(ev, flag, appt):
            continue
        days = ev.cfg.service_setting(appt.service_key, "drift_days", rule["drift_days"])
        moment = max(appt.start, flagged_at) + timedelta(days=days) * (current + 1)
        best = moment if best is None or moment < best else best
    return best
