"""Child markers: one Flag per child per marker, kept in step with the child's record.

Markers (codes.MARKER_FLAGS): complex medical needs, child-protection plan,
looked-after child, safeguarding concern.  A child has a marker while at least
one live Condition, Observation or Flag about them carries a code from that
marker's list in ``mappings/complex-needs.yaml`` (a Condition must not be
resolved, inactive, refuted or entered-in-error).  Evidence may come from any
source — a GP record, a DG1 diagnosis in a hospital ADT message, a FHIR client.

The gateway's marker Flag (author ``codes.GATEWAY_DEVICE_REF``, identifier
``codes.MARKER_FLAG_ID|<patient id>|<marker>``) is ``active`` while evidence exists and
goes ``inactive`` (period.end set) when the last evidence goes; its ``flag-detail``
extensions point at the evidence, so a reader sees why.  A marker Flag recorded by
a professional (any other author) is their decision: the hook never creates,
changes or contradicts one for that child and marker.

Runs as after-change hook order 10 (before the rules, which read active markers),
inside the transaction of the write that changed the evidence.
"""

from __future__ import annotations

from typing import Any

from gateway import codes
from gateway.gprecords.codelists import CodeList, marker_lists
from gateway.store.hooks import after_changes
from gateway.store.indexer import split_reference
from gateway.store.unit_of_work import Change, Stored, UnitOfWork, fhir_instant

EVIDENCE_TYPES = ("Condition", "Observation", "Flag")
DISPLAY = {
    codes.FLAG_COMPLEX_NEEDS: "Complex medical needs",
    codes.FLAG_CHILD_PROTECTION_PLAN: "Subject of a child-protection plan",
    codes.FLAG_LOOKED_AFTER: "Looked-after child",
    codes.FLAG_SAFEGUARDING_CONCERN: "Safeguarding concern recorded",
}
MAX_DETAILS = 10
_INACTIVE_CONDITION = {"resolved", "inactive", "remission"}
_NOT_TRUE = {"refuted", "entered-in-error"}


def _is_own_marker(resource: dict[str, Any]) -> bool:
    return resource.get("resourceType") == "Flag" and any(
        c.get("system") == codes.FLAG_CODES for c in (resource.get("code") or {}).get("coding") or ())


def _patient_of(resource: dict[str, Any]) -> str | None:
    target = split_reference((resource.get("subject") or {}).get("reference", ""))
    return target[1] if target and target[0] == "Patient" else None


def _is_live(resource: dict[str, Any]) -> bool:
    rtype = resource.get("resourceType")
    if rtype == "Condition":
        clinical = {c.get("code") for c in (resource.get("clinicalStatus") or {}).get("coding") or ()}
        verification = {c.get("code") for c in (resource.get("verificationStatus") or {}).get("coding") or ()}
        return not (clinical & _INACTIVE_CONDITION) and not (verification & _NOT_TRUE)
    if rtype == "Observation":
        return resource.get("status") not in ("entered-in-error", "cancelled")
    if rtype == "Flag":
        return resource.get("status") == "active"
    return False


def _listed(resource: dict[str, Any], lists: dict[str, CodeList]) -> bool:
    return any(cl.matches(resource.get("code")) for cl in lists.values())


@after_changes(order=10, name="markers")
def maintain_markers(uow: UnitOfWork, changes: list[Change]) -> None:
    lists = marker_lists()
    patients: set[str] = set()
    for change in changes:
        if change.after.res_type not in EVIDENCE_TYPES:
            continue
        for stored in (change.before, change.after):
            if stored is None or _is_own_marker(stored.resource):
                continue
            if _listed(stored.resource, lists):
                pid = _patient_of(stored.resource)
                if pid:
                    patients.add(pid)
    for pid in sorted(patients):
        refresh_patient(uow, pid, lists)


def refresh_patient(uow: UnitOfWork, patient_id: str, lists: dict[str, CodeList] | None = None) -> None:
    """Bring one child's marker Flags in line with their record."""
    lists = lists or marker_lists()
    evidence = _evidence(uow, patient_id, lists)
    for marker, found in evidence.items():
        if _explicit_marker(uow, patient_id, marker):
            continue
        _write_marker(uow, patient_id, marker, found)


def _evidence(uow: UnitOfWork, patient_id: str, lists: dict[str, CodeList]) -> dict[str, list[str]]:
    """marker -> references of the live resources that carry one of its codes."""
    found: dict[str, list[str]] = {m: [] for m in lists}
    wanted = {key for cl in lists.values() for key in cl.codes}
    if not wanted:
        return found
    codes_only = sorted({code for _system, code in wanted})
    marks = ",".join("?" for _ in codes_only)
    types = ",".join("?" for _ in EVIDENCE_TYPES)
    rows = uow.fetchall(
        f"SELECT DISTINCT t.res_type, t.res_id FROM idx_reference r JOIN idx_token t ON t.res_type=r.res_type "
        f"AND t.res_id=r.res_id AND t.param='code' WHERE r.param='patient' AND r.target_type='Patient' "
        f"AND r.target_id=? AND r.res_type IN ({types}) AND t.code IN ({marks})",
        (patient_id, *EVIDENCE_TYPES, *codes_only))
    for rtype, res_id in sorted(rows):
        stored = uow.get(rtype, res_id)
        if stored is None or stored.deleted or _is_own_marker(stored.resource) or not _is_live(stored.resource):
            continue
        for marker, cl in lists.items():
            if cl.matches(stored.resource.get("code")):
                found[marker].append(stored.ref)
    return found


def _explicit_marker(uow: UnitOfWork, patient_id: str, marker: str) -> bool:
    """A marker Flag a professional recorded (any author but the gateway) for this child."""
    for res_id in uow.find_by_token("Flag", "code", codes.FLAG_CODES, marker):
        stored = uow.get("Flag", res_id)
        if stored is None or stored.deleted or _patient_of(stored.resource) != patient_id:
            continue
        if (stored.resource.get("author") or {}).get("reference") != codes.GATEWAY_DEVICE_REF:
            return True
    return False


def marker_identifier(patient_id: str, marker: str) -> dict[str, str]:
    return {"system": codes.MARKER_FLAG_ID, "value": f"{patient_id}|{marker}"}


def _current(uow: UnitOfWork, patient_id: str, marker: str) -> Stored | None:
    ident = marker_identifier(patient_id, marker)
    for res_id in uow.find_by_token("Flag", "identifier", ident["system"], ident["value"]):
        stored = uow.get("Flag", res_id)
        if stored is not None and not stored.deleted:
            return stored
    return None


def _write_marker(uow: UnitOfWork, patient_id: str, marker: str, evidence: list[str]) -> None:
    current = _current(uow, patient_id, marker)
    if current is None and not evidence:
        return
    now = fhir_instant(uow.now)
    flag: dict[str, Any] = {
        "resourceType": "Flag",
        "identifier": [marker_identifier(patient_id, marker)],
        "status": "active" if evidence else "inactive",
        "category": [{"coding": [{"system": codes.FLAG_CATEGORY,
                                  "code": "clinical" if marker == codes.FLAG_COMPLEX_NEEDS else "safety"}]}],
        "code": {"coding": [{"system": codes.FLAG_CODES, "code": marker, "display": DISPLAY[marker]}],
                 "text": DISPLAY[marker]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "author": {"reference": codes.GATEWAY_DEVICE_REF},
    }
    previous = current.resource if current is not None else {}
    if evidence:
        flag["extension"] = [{"url": codes.FLAG_DETAIL, "valueReference": {"reference": ref}}
                             for ref in evidence[:MAX_DETAILS]]
        start = (previous.get("period") or {}).get("start") if previous.get("status") == "active" else None
        flag["period"] = {"start": start or now}
    else:
        flag["extension"] = previous.get("extension") or []
        if not flag["extension"]:
            del flag["extension"]
        flag["period"] = {**(previous.get("period") or {"start": now}), "end": now}
    if current is not None:
        same = {k: v for k, v in previous.items() if k not in ("id", "meta", "resourceType")}
        new = {k: v for k, v in flag.items() if k != "resourceType"}
        if same == new or (not evidence and previous.get("status") == "inactive"):
            return
        uow.update("Flag", current.res_id, flag, before=current)
    else:
        uow.create("Flag", flag)
