"""Which changes are events that agencies may subscribe to.

Called inside the unit of work, before commit, so an event is stored in the outbox
in the same transaction as the change that caused it (nothing lost in between).
The delivery side (topics, subscriptions, the worker) reads the outbox.
"""

from __future__ import annotations

from gateway.store.hooks import after_changes
from gateway.store.indexer import split_reference
from gateway.store.unit_of_work import Change, OutboxRow, UnitOfWork

APPOINTMENT_NOSHOW = "appointment-noshow"


def patient_of(resource: dict) -> str:
    """The Patient id an Appointment (or similar) is about, or ''."""
    for participant in resource.get("participant") or ():
        target = split_reference((participant.get("actor") or {}).get("reference", ""))
        if target and target[0] == "Patient":
            return target[1]
    for key in ("subject", "patient", "for"):
        target = split_reference((resource.get(key) or {}).get("reference", ""))
        if target and target[0] == "Patient":
            return target[1]
    return ""


@after_changes(order=90, name="events")
def publish_events(uow: UnitOfWork, changes: list[Change]) -> None:
    """Turn changes into outbox rows (same transaction).  Runs last among the
    after-change hooks (store/hooks.py), so Flags and Tasks the rules wrote in this
    unit of work become events too."""
    for row in events_for_changes(changes):
        uow.emit(row)


def events_for_changes(changes: list[Change]) -> list[OutboxRow]:
    rows: list[OutboxRow] = []
    for change in changes:
        after = change.after
        if after.res_type == "Appointment" and not after.deleted:
            was = change.before.resource.get("status") if change.before and not change.before.deleted else None
            if after.resource.get("status") == "noshow" and was != "noshow":
                rows.append(OutboxRow(APPOINTMENT_NOSHOW, "Appointment", after.res_id, after.version_id,
                                      patient_of(after.resource), {"previous-status": was}))
    return rows
