"""Which changes are events that agencies may subscribe to.

Called inside the unit of work, before commit, so an event is stored in the outbox
in the same transaction as the change that caused it (nothing lost in between).
The delivery side (notify/delivery.py) reads the outbox.

The event contract (docs/subscriptions.md, shared with the rules and care-plan
features):

| change | topic | action |
| --- | --- | --- |
| Flag coded was-not-brought created / status changed / escalation level changed | wnb-flag | raised, resolved, escalated, de-escalated |
| a Flag's escalation level increased (an update) | drift-escalation | escalated |
| any new CarePlan version | care-plan-changed | created, updated, deleted |
| Task coded referral-concern created, or moved to completed/cancelled/failed | referral-concern | opened, closed |
| Appointment newly noshow | appointment-noshow | noshow |

Each outbox row's payload carries what matching needs, computed now, at event
time: ``action``, ``filters`` (the values of every filter the topic supports,
including ``organization``: the parties related to the child, see
notify/relationships.py) and ``context`` (references for additional-context).
"""

from __future__ import annotations

from typing import Any

from gateway import codes
from gateway.notify.relationships import related_parties
from gateway.store.hooks import after_changes
from gateway.store.indexer import split_reference
from gateway.store.unit_of_work import Change, OutboxRow, UnitOfWork

APPOINTMENT_NOSHOW = codes.TOPIC_APPOINTMENT_NOSHOW
CLOSED_TASK = frozenset({"completed", "cancelled", "failed"})
RESOLVED_FLAG = frozenset({"inactive", "entered-in-error"})


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
    for row in events_for_changes(changes, uow):
        uow.emit(row)


def events_for_changes(changes: list[Change], uow: UnitOfWork | None = None) -> list[OutboxRow]:
    """The outbox rows for these changes.  With a unit of work, each row also names
    the parties related to the child (``organization`` filter); without one (pure
    use, tests) that list is empty."""
    rows: list[OutboxRow] = []
    for change in changes:
        for topic, action, extra in _detect(change):
            rows.append(_row(uow, change, topic, action, extra))
    return rows


# --- detection ------------------------------------------------------------------------------
def _detect(change: Change) -> list[tuple[str, str, dict[str, Any]]]:
    after = change.after
    before = change.before.resource if change.before is not None and not change.before.deleted else None
    now = after.resource if not after.deleted else None
    rtype = after.res_type
    if rtype == "Appointment":
        was = before.get("status") if before else None
        if now is not None and now.get("status") == "noshow" and was != "noshow":
            return [(codes.TOPIC_APPOINTMENT_NOSHOW, "noshow", {"previous-status": was})]
    elif rtype == "Flag":
        return _flag_events(before, now)
    elif rtype == "CarePlan":
        action = "deleted" if now is None else ("created" if before is None else "updated")
        return [(codes.TOPIC_CARE_PLAN_CHANGED, action, {})]
    elif rtype == "Task":
        return _task_events(before, now)
    return []


def has_code(resource: dict[str, Any] | None, system: str, code: str) -> bool:
    if not resource:
        return False
    return any(c.get("system") == system and c.get("code") == code
               for c in (resource.get("code") or {}).get("coding") or ())


def escalation_level(resource: dict[str, Any] | None) -> int:
    for ext in (resource or {}).get("extension") or ():
        if ext.get("url") == codes.EXT_ESCALATION_LEVEL and isinstance(ext.get("valueInteger"), int):
            return ext["valueInteger"]
    return 0


def _flag_events(before: dict | None, now: dict | None) -> list[tuple[str, str, dict[str, Any]]]:
    events: list[tuple[str, str, dict[str, Any]]] = []
    current = now if now is not None else before
    level_then, level_now = escalation_level(before), escalation_level(now)
    if has_code(current, codes.FLAG_CODES, codes.FLAG_WNB):
        status_then = before.get("status") if before else None
        status_now = now.get("status") if now else "entered-in-error"
        extra = {"previous-status": status_then, "escalation-level": level_now}
        if before is None:
            events.append((codes.TOPIC_WNB_FLAG, "resolved" if status_now in RESOLVED_FLAG else "raised", extra))
        elif status_now != status_then:
            events.append((codes.TOPIC_WNB_FLAG, "resolved" if status_now in RESOLVED_FLAG else "raised", extra))
        elif level_now != level_then:
            events.append((codes.TOPIC_WNB_FLAG, "escalated" if level_now > level_then else "de-escalated",
                           {**extra, "previous-escalation-level": level_then}))
    # Drift: an existing Flag's level went up (a Flag created at level n is "raised", not drift).
    if before is not None and now is not None and level_now > level_then:
        events.append((codes.TOPIC_DRIFT_ESCALATION, "escalated",
                       {"previous-escalation-level": level_then, "escalation-level": level_now}))
    return events


def _task_events(before: dict | None, now: dict | None) -> list[tuple[str, str, dict[str, Any]]]:
    current = now if now is not None else before
    if not has_code(current, codes.TASK_CODES, codes.TASK_REFERRAL_CONCERN) or now is None:
        return []
    status_then = before.get("status") if before else None
    status_now = now.get("status")
    if before is None:
        return [(codes.TOPIC_REFERRAL_CONCERN, "closed" if status_now in CLOSED_TASK else "opened", {})]
    if status_now in CLOSED_TASK and status_then not in CLOSED_TASK:
        return [(codes.TOPIC_REFERRAL_CONCERN, "closed", {"previous-status": status_then})]
    return []


# --- the row --------------------------------------------------------------------------------
def _codings(value: Any) -> list[str]:
    """``system|code`` for every coding of a CodeableConcept or a list of them."""
    concepts = value if isinstance(value, list) else [value] if value else []
    out = []
    for concept in concepts:
        for coding in (concept or {}).get("coding") or ():
            if coding.get("code"):
                out.append(f"{coding.get('system') or ''}|{coding['code']}")
    return out


def _filters(resource: dict[str, Any], patient_id: str, action: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {"action": [action]}
    if patient_id:
        values["patient"] = [f"Patient/{patient_id}"]
    if resource.get("status"):
        values["status"] = [resource["status"]]
    for name, key in (("code", "code"), ("category", "category"), ("service-type", "serviceType"),
                      ("specialty", "specialty")):
        found = _codings(resource.get(key))
        if found:
            values[name] = found
    return values


def _context(resource: dict[str, Any], patient_id: str) -> list[str]:
    refs = [f"Patient/{patient_id}"] if patient_id else []
    candidates = [resource.get("focus")] + list(resource.get("careTeam") or ()) + [
        ext.get("valueReference") for ext in resource.get("extension") or () if ext.get("url") == codes.FLAG_DETAIL]
    for ref in candidates:
        target = split_reference(str((ref or {}).get("reference") or "")) if isinstance(ref, dict) else None
        if target and f"{target[0]}/{target[1]}" not in refs:
            refs.append(f"{target[0]}/{target[1]}")
    return refs


def _row(uow: UnitOfWork | None, change: Change, topic: str, action: str, extra: dict[str, Any]) -> OutboxRow:
    after = change.after
    resource = after.resource if not after.deleted else (change.before.resource if change.before else {})
    patient_id = patient_of(resource)
    filters = _filters(resource, patient_id, action)
    if uow is not None:
        filters["organization"] = related_parties(uow, patient_id, resource)
    payload = {**extra, "action": action, "filters": filters, "context": _context(resource, patient_id)}
    return OutboxRow(topic, after.res_type, after.res_id, after.version_id, patient_id, payload)
