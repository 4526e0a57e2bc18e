"""Tasks the rules create for people, and the check that closes them honestly.

A Task is found again by (code, focus, owner), so re-evaluation updates it rather
than piling up duplicates.  Routing (R2): the child's lead professional when a care
team names one (the registered GP practice gets a copy), otherwise the GP practice.

Completion needs an outcome: an enquiry or review Task set ``completed`` without a
``Task.output`` holding the professional's outcome is refused (422 naming
``Task.output``).  A reason reported by the parent or carer is recorded on the Task
(``input`` + ``note``) but never completes it (R5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway import codes
from gateway.rules.config import Rule
from gateway.rules.facts import ChildRecord, codings, task_code
from gateway.rules.flags import ensure_device
from gateway.store.hooks import WriteRejected, before_write
from gateway.store.indexer import split_reference
from gateway.store.unit_of_work import Stored, UnitOfWork

TASK_DISPLAY = {
    codes.TASK_REVIEW_MISSED: "Review missed appointments",
    codes.TASK_WNB_ENQUIRY: "Enquire about a missed appointment (beyond the carer's report)",
    codes.TASK_DISCHARGE_REVIEW: "Review discharge after non-attendance",
    codes.TASK_COORDINATE: "Coordinate appointments",
    codes.TASK_CREATE_CARE_PLAN: "Create an integrated care plan",
}
INPUT_DISPLAY = {codes.TASK_INPUT_EVIDENCE: "Evidence", codes.TASK_INPUT_CARER_REASON: "Reason reported by parent/carer",
                 codes.TASK_OUTPUT_OUTCOME: "Outcome"}
# Tasks a professional must close with an outcome.
NEEDS_OUTCOME = (codes.TASK_REVIEW_MISSED, codes.TASK_WNB_ENQUIRY, codes.TASK_DISCHARGE_REVIEW)
OPEN_STATUSES = ("draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold")
COPY_STATUS = "copy for information"


def type_concept(code: str) -> dict[str, Any]:
    return {"coding": [{"system": codes.TASK_CODES, "code": code, "display": INPUT_DISPLAY[code]}]}


@dataclass
class TaskSpec:
    rule: Rule
    code: str
    description: str
    focus: str
    owner: str
    evidence: list[tuple[str, str]] = field(default_factory=list)
    carer_reason: str = ""
    priority: str = "routine"
    note: str = ""
    part_of: str = ""
    copy: bool = False


def route(record: ChildRecord) -> tuple[str, str]:
    """(owner, copy-to): lead professional + GP copy, or the GP practice alone."""
    lead, gp = record.lead_ref(), record.gp_ref()
    if lead:
        return lead, (gp if gp != lead else "")
    return gp, ""


def find(record: ChildRecord, code: str, focus: str, owner: str | None = None,
         statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    out = []
    for task in record.tasks:
        if task_code(task) != code or (task.get("focus") or {}).get("reference") != focus:
            continue
        if owner is not None and (task.get("owner") or {}).get("reference", "") != owner:
            continue
        if statuses is not None and task.get("status") not in statuses:
            continue
        out.append(task)
    return out


def _body(spec: TaskSpec, record: ChildRecord, now: str, existing: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Task",
        "extension": [{"url": codes.EXT_RULE, "valueString": spec.rule.tag}],
        "status": existing.get("status", "requested") if existing else "requested",
        "intent": "order",
        "priority": spec.priority,
        "code": {"coding": [{"system": codes.TASK_CODES, "code": spec.code, "display": TASK_DISPLAY[spec.code]}],
                 "text": TASK_DISPLAY[spec.code]},
        "description": spec.description,
        "focus": {"reference": spec.focus},
        "for": {"reference": record.patient_ref},
        "authoredOn": existing.get("authoredOn", now) if existing else now,
        "requester": {"reference": codes.GATEWAY_DEVICE_REF, "display": "FHIR safeguarding gateway"},
    }
    if spec.owner:
        body["owner"] = {"reference": spec.owner}
    if spec.part_of:
        body["partOf"] = [{"reference": spec.part_of}]
    if spec.copy:
        body["businessStatus"] = {"text": COPY_STATUS}
    inputs = [{"type": type_concept(codes.TASK_INPUT_EVIDENCE), "valueReference": {"reference": ref, "display": disp}}
              for ref, disp in spec.evidence]
    if spec.carer_reason:
        inputs.append({"type": type_concept(codes.TASK_INPUT_CARER_REASON), "valueString": spec.carer_reason})
    if inputs:
        body["input"] = inputs
    notes = []
    if spec.note:
        notes.append({"text": spec.note})
    if spec.carer_reason:
        notes.append({"text": f"Reason reported by parent/carer: {spec.carer_reason}. Recorded only: it does "
                              "not complete this enquiry; a professional's outcome does."})
    if notes:
        body["note"] = notes
    if existing:  # what people added (output, their notes, executionPeriod ...) is kept
        for key, value in existing.items():
            if key not in body and key not in ("meta", "id", "lastModified"):
                body[key] = value
        own = {n.get("text") for n in notes}
        theirs = [n for n in existing.get("note") or () if n.get("text") not in own and not _is_rule_note(n)]
        if theirs or notes:
            body["note"] = notes + theirs
    return body


def _is_rule_note(note: dict[str, Any]) -> bool:
    text = note.get("text", "")
    return text.startswith("Reason reported by parent/carer:") or text.startswith("Raised by rule ")


def ensure(uow: UnitOfWork, record: ChildRecord, spec: TaskSpec, now: str, *,
           reopen_closed: bool = False) -> tuple[str, dict[str, Any] | None]:
    """Create the Task, or bring the open one in line (no write if nothing changed).
    A closed Task for the same thing is left alone and nothing new is created unless
    ``reopen_closed`` (e.g. a review after a later escalation)."""
    matches = find(record, spec.code, spec.focus, spec.owner)
    open_ = [t for t in matches if t.get("status") in OPEN_STATUSES]
    if not open_ and matches and not reopen_closed:
        return "closed", matches[0]
    existing = open_[0] if open_ else None
    body = _body(spec, record, now, existing)
    if existing is not None:
        if all(existing.get(k) == v for k, v in body.items() if k != "lastModified"):
            return "unchanged", existing
        body["lastModified"] = now
        stored = uow.update("Task", existing["id"], body)
        record.tasks[:] = [stored.resource if t.get("id") == existing["id"] else t for t in record.tasks]
        return "updated", stored.resource
    body["lastModified"] = now
    ensure_device(uow)
    stored = uow.create("Task", body)
    record.tasks.append(stored.resource)
    return "created", stored.resource


def ensure_with_copy(uow: UnitOfWork, record: ChildRecord, spec: TaskSpec, copy_to: str, now: str, *,
                     reopen_closed: bool = False) -> dict[str, Any] | None:
    action, main = ensure(uow, record, spec, now, reopen_closed=reopen_closed)
    if copy_to and main is not None and action != "closed":
        copy = TaskSpec(spec.rule, spec.code, spec.description, spec.focus, copy_to, spec.evidence,
                        spec.carer_reason, spec.priority, "Copy for the registered GP practice: the lead "
                        "professional owns this review.", part_of=f"Task/{main['id']}", copy=True)
        ensure(uow, record, copy, now, reopen_closed=reopen_closed)
    return main


def has_outcome(task: dict[str, Any]) -> bool:
    """An output other than a carer-reported reason (that is never an outcome)."""
    for output in task.get("output") or ():
        kinds = {c.get("code") for c in codings(output.get("type"))}
        if codes.TASK_INPUT_CARER_REASON in kinds:
            continue
        if any(k.startswith("value") and v not in (None, "", {}, []) for k, v in output.items()):
            return True
    return False


def completed_at(task: dict[str, Any]) -> str:
    return ((task.get("executionPeriod") or {}).get("end") or task.get("lastModified")
            or (task.get("meta") or {}).get("lastUpdated") or "")


@before_write("Task")
def require_outcome(_uow: UnitOfWork, task: dict[str, Any], _before: Stored | None) -> None:
    """An enquiry/review Task is completed only with a professional's outcome (R4, R5)."""
    if task.get("status") != "completed":
        return None
    code = next((c.get("code") for c in codings(task.get("code")) if c.get("system") == codes.TASK_CODES), None)
    if code in NEEDS_OUTCOME and not has_outcome(task):
        raise WriteRejected(
            f"a '{code}' Task can only be completed with the professional's outcome in Task.output "
            "(a reason reported by the parent or carer is not an outcome)", expression=["Task.output"])
    return None


def patient_of_task(task: dict[str, Any]) -> str:
    target = split_reference((task.get("for") or {}).get("reference", ""))
    return target[1] if target and target[0] == "Patient" else ""
