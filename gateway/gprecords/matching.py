"""Which stored Patient a GP record's Patient is: the "one child, many sources" rule.

* A valid NHS number (Modulus 11) joins the Patient the hospital feed (or another
  GP import) created with that number: same resource, identifiers merged.
* No NHS number, or one failing its check digit: the record is **not** merged
  with anyone (a name and birth date are not enough to join two children's
  records); it becomes its own Patient, found again on re-import by its
  source-record identifier, and the match report says why.
* A failing NHS number is kept, but under ``.../nhs-number-unverified`` (as the
  HL7 mapping does), so it can never match or be matched by the real system.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway import codes
from gateway.mapping.nhs_number import is_valid_nhs_number, normalize_nhs_number
from gateway.store.apply_intents import _follow_replaced_by
from gateway.store.unit_of_work import Stored, UnitOfWork

JOINED, UPDATED, CREATED, NOT_MERGED = "joined", "updated", "created", "not-merged"


@dataclass(slots=True)
class PatientMatch:
    existing: Stored | None
    outcome: str  # joined | updated | created | not-merged
    reason: str
    nhs_number: str | None


def unverified_system(source_slug: str) -> str:
    return f"{codes.BASE}/id/{source_slug}/nhs-number-unverified"


def check_nhs_numbers(resource: dict[str, Any], source_slug: str) -> tuple[str | None, str]:
    """Normalise NHS-number identifiers in place; return (the valid number or None, why not)."""
    valid, reason = None, "the record has no NHS number"
    for ident in resource.get("identifier") or ():
        if not isinstance(ident, dict) or ident.get("system") != codes.NHS_NUMBER:
            continue
        value = str(ident.get("value") or "")
        if is_valid_nhs_number(value):
            ident["value"] = normalize_nhs_number(value)
            valid = valid or ident["value"]
        else:
            ident["system"] = unverified_system(source_slug)
            reason = f"NHS number {value!r} fails its check digit (Modulus 11)"
    return valid, ("" if valid else reason)


def match_patient(uow: UnitOfWork, resource: dict[str, Any], record_system: str, record_value: str,
                  source_uri: str, source_slug: str) -> PatientMatch:
    nhs, reason = check_nhs_numbers(resource, source_slug)
    previous = _by_identifier(uow, record_system, record_value)
    if nhs:
        for res_id in uow.find_by_token("Patient", "identifier", codes.NHS_NUMBER, nhs):
            stored = _follow_replaced_by(uow, uow.get("Patient", res_id))
            if stored is not None and not stored.deleted:
                same = (stored.resource.get("meta") or {}).get("source") == source_uri
                return PatientMatch(stored, UPDATED if same else JOINED,
                                    "" if same else "same NHS number as the Patient already held", nhs)
        if previous is not None:
            return PatientMatch(previous, UPDATED, "", nhs)
        return PatientMatch(None, CREATED, "no Patient with this NHS number yet", nhs)
    return PatientMatch(previous, NOT_MERGED, reason + "; imported as its own Patient, not merged", None)


def _by_identifier(uow: UnitOfWork, system: str, value: str) -> Stored | None:
    for res_id in uow.find_by_token("Patient", "identifier", system, value):
        stored = _follow_replaced_by(uow, uow.get("Patient", res_id))
        if stored is not None and not stored.deleted:
            return stored
    return None
