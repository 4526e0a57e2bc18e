"""R6: coordination (rec. 1.6).

A child with ``threshold`` (4) or more booked appointments across ``min_services``
(2) or more services within ``window_days`` (30) gets one "coordinate
appointments" Task for the lead professional or the GP practice, listing them.
While that Task is open it follows the bookings; once closed, a new one is raised
only for appointments no earlier coordination Task listed.
"""

from __future__ import annotations

from datetime import timedelta

from gateway import codes
from gateway.rules import tasks as task_writer
from gateway.rules.context import Evaluation
from gateway.rules.facts import Appt, is_child_on, parse_date
from gateway.rules.tasks import TaskSpec
from gateway.rules.wording import join, plural

R6 = "R6-coordinate-appointments"


def cluster(ev: Evaluation) -> list[Appt]:
    rule = ev.cfg.rule(R6)
    booked = [a for a in ev.record.appointments if a.status in ev.cfg.booked_statuses and a.start is not None
              and a.child_at_date and not ev.cfg.service_setting(a.service_key, "ignore", False)]
    if rule["upcoming_only"]:
        booked = [a for a in booked if a.start >= ev.now]
    width = timedelta(days=rule["window_days"])
    chosen: dict[str, Appt] = {}
    for i, first in enumerate(booked):
        window = [a for a in booked[i:] if a.start <= first.start + width]
        if len(window) >= rule["threshold"] and len({a.service_key for a in window}) >= rule["min_services"]:
            chosen.update((a.id, a) for a in window)
    return sorted(chosen.values(), key=lambda a: (a.start, a.id))


def evaluate(ev: Evaluation) -> None:
    rule = ev.cfg.rule(R6)
    if not is_child_on(parse_date(ev.record.patient.get("birthDate")), ev.now, ev.cfg.child_age_under):
        return
    appts = cluster(ev)
    if not appts:
        return
    focus = ev.record.patient_ref
    existing = task_writer.find(ev.record, codes.TASK_COORDINATE, focus)
    open_ = [t for t in existing if t.get("status") in task_writer.OPEN_STATUSES]
    covered = {(i.get("valueReference") or {}).get("reference") for t in existing for i in t.get("input") or ()}
    if not open_ and not {a.ref for a in appts} - covered:
        return
    owner, _copy = task_writer.route(ev.record)
    if open_:
        owner = (open_[0].get("owner") or {}).get("reference", owner)
    services = sorted({a.service_label for a in appts})
    text = (f"{plural(len(appts), 'appointment')} booked within {rule['window_days']} days across "
            f"{plural(len(services), 'service')} ({join(services)}): "
            + "; ".join(f"{a.service_label} {a.start.strftime('%Y-%m-%d %H:%M')}" for a in appts)
            + ". Consider coordinating them (same day or site, joint clinic, transport) so the child can be brought.")
    spec = TaskSpec(rule, codes.TASK_COORDINATE, text, focus, owner,
                    [(a.ref, f"{a.service_label}, {a.start.strftime('%Y-%m-%d %H:%M')}") for a in appts],
                    note=f"Raised by rule {rule.tag}.")
    action, task = task_writer.ensure(ev.uow, ev.record, spec, ev.stamp, reopen_closed=True)
    ev.note(R6, action, f"Task/{task['id']}" if task else "")
