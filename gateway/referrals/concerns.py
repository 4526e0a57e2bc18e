"""Every concern of a referral is tracked on its own (case review, Theme 2 rec. 1).

A referral (ServiceRequest) states its concerns in ``reasonCode`` (HL7 DG1-3 and
OBR-31, or a FHIR client) and ``reasonReference`` (Conditions).  Each concern gets
one Task (code ``TASK_CODES|referral-concern``, ``focus`` the ServiceRequest, the
concern in ``Task.reasonCode`` / ``reasonReference``, ``owner`` the receiving service
= ``ServiceRequest.performer[0]``, ``for`` the Patient), so that actioning one
concern never closes another.

* Idempotent: a Task's identifier is ``REFERRAL_CONCERN_ID | <ServiceRequest id>|<hash
  of the concern>``, so re-sent or re-saved referrals never give a concern a second Task.
* A concern removed by a modification (REF^I13, or a PUT) gets its open Task
  *cancelled*, never deleted (the record that it was raised stays); if the concern
  comes back, that same Task is reopened.
* The guard: a referral cannot be **completed** while a Task of one of its (still
  listed) concerns is open.  The write is refused (``WriteRejected``): 422
  OperationOutcome on the FHIR API, AE on HL7 (the message is logged and can be
  replayed with ``gateway reprocess`` once the concerns are closed).  Refusal, not a
  Flag, because a Flag would let the referral close and leave the concern to be
  noticed; refusal keeps the referral open until someone decides about each concern.
* A referral revoked (I14 cancel, e.g. after non-attendance) keeps its open concern
  Tasks: a cancelled referral does not make its concerns go away.  A referral entered
  in error (or deleted) has its open Tasks cancelled.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway import codes
from gateway.store.hooks import WriteRejected, after_changes, before_write
from gateway.store.indexer import split_reference
from gateway.store.search import matching_ids
from gateway.store.unit_of_work import Change, Stored, UnitOfWork, fhir_instant

OPEN_TASK = frozenset({"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"})
LIVE_REFERRAL = frozenset({"draft", "active", "on-hold"})
REMOVED = "the concern was removed from the referral by a later version of it"
VOIDED = "the referral was entered in error or deleted"


# --- concerns ----------------------------------------------------------------------------
def concern_key(concern: dict[str, Any]) -> str:
    """What makes two concerns the same: the first coded (system, code), else the
    reference, else the normalised text."""
    if "reference" in concern or "identifier" in concern:
        return "ref:" + (concern.get("reference") or str(concern.get("identifier")))
    for coding in concern.get("coding") or ():
        if coding.get("code"):
            return f"code:{coding.get('system', '')}|{coding['code']}"
    return "text:" + " ".join(str(concern.get("text", "")).lower().split())


def concern_label(concern: dict[str, Any]) -> str:
    if concern.get("text"):
        return str(concern["text"])
    if concern.get("display"):
        return str(concern["display"])
    for coding in concern.get("coding") or ():
        if coding.get("display") or coding.get("code"):
            return str(coding.get("display") or coding.get("code"))
    return concern.get("reference", "unnamed concern")


def concerns_of(referral: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """key -> (element, concern) for every concern the referral lists, first wins."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for element in ("reasonCode", "reasonReference"):
        for concern in referral.get(element) or ():
            if isinstance(concern, dict) and concern:
                found.setdefault(concern_key(concern), (element, concern))
    return found


def task_identifier(referral_id: str, key: str) -> str:
    """Short and stable (index columns hold 255 characters; a coded concern's key may not fit)."""
    return f"{referral_id}|{hashlib.sha256(key.encode()).hexdigest()[:20]}"


def concern_tasks(uow: UnitOfWork, referral_id: str) -> dict[str, Stored]:
    """The concern Tasks of a referral, by identifier value."""
    ids = matching_ids(uow, "Task", [("focus", f"ServiceRequest/{referral_id}"),
                                     ("code", f"{codes.TASK_CODES}|{codes.TASK_REFERRAL_CONCERN}")])
    out: dict[str, Stored] = {}
    for task_id in ids:
        stored = uow.get("Task", task_id)
        if stored is None or stored.deleted:
            continue
        for ident in stored.resource.get("identifier") or ():
            if ident.get("system") == codes.REFERRAL_CONCERN_ID:
                out[ident.get("value", "")] = stored
    return out


# --- the guard (and a default for HL7 modifications) --------------------------------------
@before_write("ServiceRequest")
def check_referral(uow: UnitOfWork, resource: dict[str, Any], before: Stored | None) -> dict[str, Any] | None:
    amended = None
    if not resource.get("status"):  # REF^I13/I15 without RF1-1 for a referral not seen before
        amended = {**resource, "status": before.resource.get("status", "active") if before else "active"}
        resource = amended
    _check_subject(uow, resource, "ServiceRequest.subject")
    if resource.get("status") == "completed" and before is not None and before.resource.get("status") != "completed":
        _refuse_early_completion(uow, before.res_id, resource)
    return amended


def _check_subject(uow: UnitOfWork, resource: dict[str, Any], element: str) -> None:
    target = split_reference((resource.get("subject") or {}).get("reference", ""))
    if target and target[0] == "Patient":
        stored = uow.get(*target)
        if stored is None or stored.deleted:
            raise WriteRejected(f"{element} refers to Patient/{target[1]}, which does not exist",
                                expression=[element], code="not-found")


def _refuse_early_completion(uow: UnitOfWork, referral_id: str, referral: dict[str, Any]) -> None:
    listed = {task_identifier(referral_id, key) for key in concerns_of(referral)}
    still_open = [t for value, t in concern_tasks(uow, referral_id).items()
                  if value in listed and t.resource.get("status") in OPEN_TASK]
    if still_open:
        names = "; ".join(f"Task/{t.res_id} ({_task_concern(t.resource)}, {t.resource.get('status')})"
                          for t in sorted(still_open, key=lambda t: t.res_id))
        raise WriteRejected(
            f"ServiceRequest/{referral_id} cannot be completed while {len(still_open)} of its concerns "
            f"{'is' if len(still_open) == 1 else 'are'} open: {names}. Complete or cancel each concern's "
            f"Task first (every concern needs its own outcome)", expression=["ServiceRequest.status"])


def _task_concern(task: dict[str, Any]) -> str:
    concern = task.get("reasonCode") or task.get("reasonReference") or {}
    return concern_label(concern)


# --- tracking -------------------------------------------------------------------------------
@after_changes(order=20, name="referral-concerns")
def track_concerns(uow: UnitOfWork, changes: list[Change]) -> None:
    """One Task per concern of every referral written in this unit of work."""
    seen: set[str] = set()
    for change in changes:
        after = change.after
        if after.res_type != "ServiceRequest" or after.res_id in seen:
            continue
        seen.add(after.res_id)
        current = uow.get("ServiceRequest", after.res_id)
        if current is not None:
            sync_concern_tasks(uow, current)


def sync_concern_tasks(uow: UnitOfWork, referral: Stored) -> None:
    resource = referral.resource
    status = resource.get("status")
    tasks = concern_tasks(uow, referral.res_id)
    if referral.deleted or status == "entered-in-error":
        for task in tasks.values():
            _close(uow, task, VOIDED)
        return
    if status not in LIVE_REFERRAL:
        return  # revoked / completed: open concerns stay open (see the module docstring)
    concerns = concerns_of(resource)
    wanted: dict[str, tuple[int, str, dict[str, Any]]] = {}
    for number, (key, (element, concern)) in enumerate(concerns.items(), 1):
        wanted[task_identifier(referral.res_id, key)] = (number, element, concern)
    for value, (number, element, concern) in wanted.items():
        task = tasks.get(value)
        if task is None:
            uow.create("Task", _new_task(uow, referral, value, number, len(wanted), element, concern))
        elif task.resource.get("status") == "cancelled" and (task.resource.get("statusReason") or {}).get(
                "text") == REMOVED:
            reopened = {k: v for k, v in task.resource.items() if k not in ("statusReason",)}
            reopened.update(status="requested", lastModified=fhir_instant(uow.now))
            uow.update("Task", task.res_id, reopened, before=task)
        elif task.resource.get("status") in OPEN_TASK and "owner" not in task.resource and resource.get("performer"):
            uow.update("Task", task.res_id, {**task.resource, "owner": resource["performer"][0],
                                             "lastModified": fhir_instant(uow.now)}, before=task)
    for value, task in tasks.items():
        if value not in wanted:
            _close(uow, task, REMOVED)


def _new_task(uow: UnitOfWork, referral: Stored, value: str, number: int, total: int, element: str,
              concern: dict[str, Any]) -> dict[str, Any]:
    sr = referral.resource
    now = fhir_instant(uow.now)
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [{"system": codes.REFERRAL_CONCERN_ID, "value": value}],
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": codes.TASK_CODES, "code": codes.TASK_REFERRAL_CONCERN,
                             "display": "Referral concern"}]},
        "description": f"Concern {number} of {total} of the referral: {concern_label(concern)}",
        "focus": {"reference": f"ServiceRequest/{referral.res_id}"},
        "authoredOn": now,
        "lastModified": now,
    }
    if element == "reasonCode":
        task["reasonCode"] = concern
    else:
        task["reasonReference"] = concern
    if sr.get("subject"):
        task["for"] = sr["subject"]
    if sr.get("performer"):
        task["owner"] = sr["performer"][0]  # the receiving service acts on each concern
    if sr.get("requester"):
        task["requester"] = sr["requester"]
    if sr.get("priority"):
        task["priority"] = sr["priority"]
    return task


def _close(uow: UnitOfWork, task: Stored, why: str) -> None:
    if task.resource.get("status") not in OPEN_TASK:
        return
    closed = {**task.resource, "status": "cancelled", "statusReason": {"text": why},
              "lastModified": fhir_instant(uow.now)}
    uow.update("Task", task.res_id, closed, before=task)
