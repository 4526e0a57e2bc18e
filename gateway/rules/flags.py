"""Explainable Flags: what a rule raised, why, and on what evidence.

One open Flag per child per rule.  Re-evaluation rewrites it only when something a
reader would see changed (text, evidence, priority), so replaying a feed writes no
new versions; a Flag whose condition no longer holds becomes ``inactive`` with
``period.end`` — never deleted.

Each Flag carries: ``text`` (plain English), ``code`` from the product CodeSystem,
``category`` safety, ``period.start``, ``author`` the gateway Device, one
``flag-detail`` extension per piece of evidence (Appointments, ServiceRequests,
EpisodesOfCare), ``flag-priority`` (PN/PL/PM/PH), the escalation level (R7) and the
rule id|version that raised it.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from gateway import codes
from gateway.rules.config import PRIORITIES, Rule
from gateway.rules.facts import ChildRecord, rule_tag
from gateway.store.unit_of_work import UnitOfWork, fhir_instant

FLAG_PRIORITY_SYSTEM = "http://hl7.org/fhir/flag-priority-code"
PRIORITY_DISPLAY = {"PN": "No alarm", "PL": "Low priority", "PM": "Medium priority", "PH": "High priority"}
FLAG_DISPLAY = {
    codes.FLAG_WNB: "Was not brought: missed appointments that matter",
    codes.FLAG_DISGUISED_NON_ENGAGEMENT: "Possible disguised non-engagement: repeated cancellations by parent/carer",
    codes.FLAG_DISCHARGED_AFTER_WNB: "Discharged after was not brought: review required",
    codes.FLAG_NO_CARE_PLAN: "Complex needs and several services: no integrated care plan",
}

DEVICE = {
    "resourceType": "Device",
    "id": codes.GATEWAY_DEVICE_ID,
    "status": "active",
    "deviceName": [{"name": "FHIR safeguarding gateway: safeguarding rules engine", "type": "user-friendly-name"}],
    "type": {"text": "Safeguarding rules engine (software)"},
}


def ensure_device(uow: UnitOfWork) -> None:
    """The gateway's Device (author of every rule Flag / requester of every Task) exists."""
    stored = uow.get("Device", codes.GATEWAY_DEVICE_ID)
    if stored is None or stored.deleted:
        uow.update("Device", codes.GATEWAY_DEVICE_ID, dict(DEVICE))


@dataclass
class FlagSpec:
    """What a rule wants the child's open Flag to say."""

    rule: Rule
    code: str
    text: str
    evidence: list[tuple[str, str]]  # (reference, display)
    base_priority: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FlagResult:
    action: str  # raised | updated | unchanged | resolved | none
    flag: dict[str, Any] | None
    previous: dict[str, Any] | None = None  # the open Flag before this evaluation

    @property
    def ref(self) -> str:
        return f"Flag/{self.flag['id']}" if self.flag else ""


def narrative(text: str) -> dict[str, str]:
    return {"status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text, quote=False)}</p></div>'}


def escalation_level(flag: dict[str, Any]) -> int:
    for ext in flag.get("extension") or ():
        if ext.get("url") == codes.EXT_ESCALATION_LEVEL:
            return int(ext.get("valueInteger") or 0)
    return 0


def priority_for(base: str, level: int) -> str:
    return PRIORITIES[min(len(PRIORITIES) - 1, PRIORITIES.index(base) + level)]


def evidence_refs(flag: dict[str, Any]) -> list[str]:
    return [(ext.get("valueReference") or {}).get("reference", "") for ext in flag.get("extension") or ()
            if ext.get("url") == codes.FLAG_DETAIL]


def _extensions(spec: FlagSpec, level: int) -> list[dict[str, Any]]:
    exts: list[dict[str, Any]] = [{"url": codes.FLAG_DETAIL, "valueReference": {"reference": ref, "display": disp}}
                                  for ref, disp in spec.evidence]
    priority = priority_for(spec.base_priority, level)
    exts.append({"url": codes.FLAG_PRIORITY, "valueCodeableConcept": {"coding": [
        {"system": FLAG_PRIORITY_SYSTEM, "code": priority, "display": PRIORITY_DISPLAY[priority]}]}})
    exts.append({"url": codes.EXT_ESCALATION_LEVEL, "valueInteger": level})
    exts.append({"url": codes.EXT_RULE, "valueString": spec.rule.tag})
    return exts


def open_flag(record: ChildRecord, rule_id: str) -> dict[str, Any] | None:
    """The child's open Flag for this rule (the oldest, should a race ever have made two)."""
    found = [f for f in record.rule_flags(rule_id) if f.get("status") == "active"]
    found.sort(key=lambda f: ((f.get("period") or {}).get("start", ""), f["id"]))
    return found[0] if found else None


def _write(uow: UnitOfWork, record: ChildRecord, flag: dict[str, Any], res_id: str | None) -> dict[str, Any]:
    ensure_device(uow)
    if res_id is None:
        stored = uow.create("Flag", flag)
        record.flags.append(stored.resource)
    else:
        stored = uow.update("Flag", res_id, flag)
        record.flags[:] = [stored.resource if f.get("id") == res_id else f for f in record.flags]
    return stored.resource


def reconcile(uow: UnitOfWork, record: ChildRecord, rule: Rule, spec: FlagSpec | None, now: str,
              *, level: int | None = None) -> FlagResult:
    """Bring the child's Flag for ``rule`` in line with ``spec`` (None: the condition
    does not hold).  ``level`` (R7) sets the escalation level; otherwise it is kept."""
    current = open_flag(record, rule.id)
    if spec is None:
        if current is None:
            return FlagResult("none", None)
        resolved = {k: v for k, v in current.items() if k != "meta"}
        resolved["status"] = "inactive"
        resolved["period"] = {**(current.get("period") or {}), "end": now}
        return FlagResult("resolved", _write(uow, record, resolved, current["id"]), current)
    kept_level = escalation_level(current) if current else 0
    new_level = kept_level if level is None else max(level, kept_level)
    body: dict[str, Any] = {
        "resourceType": "Flag",
        "extension": _extensions(spec, new_level),
        "status": "active",
        "category": [{"coding": [{"system": codes.FLAG_CATEGORY, "code": "safety", "display": "Safety"}],
                      "text": "Safety"}],
        "code": {"coding": [{"system": codes.FLAG_CODES, "code": spec.code, "display": FLAG_DISPLAY[spec.code]}],
                 "text": FLAG_DISPLAY[spec.code]},
        "subject": {"reference": record.patient_ref},
        "period": {"start": (current.get("period") or {}).get("start", now) if current else now},
        "author": {"reference": codes.GATEWAY_DEVICE_REF, "display": "FHIR safeguarding gateway"},
        "text": narrative(spec.text),
    }
    if current is None:
        return FlagResult("raised", _write(uow, record, body, None), None)
    if all(current.get(k) == v for k, v in body.items()):
        return FlagResult("unchanged", current, current)
    return FlagResult("updated", _write(uow, record, body, current["id"]), current)


def is_rule_flag(flag: dict[str, Any]) -> bool:
    return bool(rule_tag(flag))


def now_text(uow_now: Any) -> str:
    return fhir_instant(uow_now)
