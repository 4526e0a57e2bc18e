"""Who has a legitimate relationship with a child, computed when an event happens.

Caldicott: an agency bound to an organisation is told only about children it has
a relationship with.  The model (docs/subscriptions.md, "Only where there is a
relationship"):

1. the child's **registered GP practice** — ``Patient.generalPractitioner`` (an
   Organization, or a PractitionerRole's organization);
2. every **CareTeam participant** of a CareTeam about the child (not inactive or
   entered-in-error): ``participant.member`` and ``participant.onBehalfOf``
   (Organization, HealthcareService, or a PractitionerRole's organization and
   service), and the team's ``managingOrganization``;
3. the **service the event belongs to** — for an Appointment its HealthcareService,
   Location and PractitionerRole actors; for a referral (ServiceRequest) its
   performer and requester; for a Task its owner, requester and the referral it is
   about; for a Flag its author and the appointments its flag-detail names; for a
   CarePlan its author, contributors and care teams.  A HealthcareService brings
   its ``providedBy`` Organization; a Location its ``managingOrganization``.

Each party appears as its reference (``Organization/x``, ``HealthcareService/y``)
and as every identifier it carries (``system|value`` — e.g. its ODS code), so a
subscription can be bound by either.  Computed at event time and stored with the
event: a later change of GP does not rewrite who was told about the past.
"""

from __future__ import annotations

from typing import Any

from gateway import codes
from gateway.store.indexer import split_reference
from gateway.store.unit_of_work import UnitOfWork

PARTY_TYPES = ("Organization", "HealthcareService")
_INACTIVE_TEAM = ("inactive", "entered-in-error")


class _Collector:
    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.parties: dict[str, None] = {}
        self._seen: set[str] = set()

    def resolve(self, reference: dict[str, Any] | None, depth: int = 0) -> None:
        """Add the party a reference names (following roles, services, locations)."""
        if not isinstance(reference, dict) or depth > 3:
            return
        ident = reference.get("identifier")
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            self.parties[f"{ident['system']}|{ident['value']}"] = None
        target = split_reference(str(reference.get("reference") or ""))
        if target is None:
            return
        key = f"{target[0]}/{target[1]}"
        if key in self._seen:
            return
        self._seen.add(key)
        rtype, rid = target
        if rtype not in ("Organization", "HealthcareService", "Location", "PractitionerRole", "CareTeam"):
            return
        stored = self.uow.get(rtype, rid)
        resource = stored.resource if stored is not None and not stored.deleted else {}
        if rtype in PARTY_TYPES:
            self.parties[key] = None
            for identifier in resource.get("identifier") or ():
                if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
                    self.parties[f"{identifier['system']}|{identifier['value']}"] = None
        if rtype == "HealthcareService":
            self.resolve(resource.get("providedBy"), depth + 1)
        elif rtype == "Location":
            self.resolve(resource.get("managingOrganization"), depth + 1)
        elif rtype == "PractitionerRole":
            self.resolve(resource.get("organization"), depth + 1)
            for service in resource.get("healthcareService") or ():
                self.resolve(service, depth + 1)
        elif rtype == "CareTeam" and resource.get("status") not in _INACTIVE_TEAM:
            self.care_team(resource, depth + 1)

    def care_team(self, team: dict[str, Any], depth: int = 0) -> None:
        for participant in team.get("participant") or ():
            self.resolve(participant.get("member"), depth + 1)
            self.resolve(participant.get("onBehalfOf"), depth + 1)
        for org in team.get("managingOrganization") or ():
            self.resolve(org, depth + 1)


def related_parties(uow: UnitOfWork, patient_id: str, focus: dict[str, Any]) -> list[str]:
    """References and identifiers of every party related to the child (see module doc)."""
    found = _Collector(uow)
    if patient_id:
        patient = uow.get("Patient", patient_id)
        if patient is not None and not patient.deleted:
            for gp in patient.resource.get("generalPractitioner") or ():
                found.resolve(gp)
        for (team_id,) in uow.fetchall(
                "SELECT res_id FROM idx_reference WHERE res_type='CareTeam' AND param='patient' "
                "AND target_type='Patient' AND target_id=?", (patient_id,)):
            found.resolve({"reference": f"CareTeam/{team_id}"})
    _service_of(found, focus)
    return list(found.parties)


def _service_of(found: _Collector, focus: dict[str, Any], depth: int = 0) -> None:
    rtype = focus.get("resourceType")
    if rtype == "Appointment":
        for participant in focus.get("participant") or ():
            found.resolve(participant.get("actor"))
        for based in focus.get("basedOn") or ():
            _follow(found, based, depth)
    elif rtype == "ServiceRequest":
        for performer in focus.get("performer") or ():
            found.resolve(performer)
        found.resolve(focus.get("requester"))
    elif rtype == "Task":
        found.resolve(focus.get("owner"))
        found.resolve(focus.get("requester"))
        _follow(found, focus.get("focus"), depth)
        for based in focus.get("basedOn") or ():
            _follow(found, based, depth)
    elif rtype == "Flag":
        found.resolve(focus.get("author"))
        for ext in focus.get("extension") or ():
            if ext.get("url") == codes.FLAG_DETAIL:
                _follow(found, ext.get("valueReference"), depth)
    elif rtype == "CarePlan":
        found.resolve(focus.get("author"))
        for contributor in focus.get("contributor") or ():
            found.resolve(contributor)
        for team in focus.get("careTeam") or ():
            found.resolve(team)


def _follow(found: _Collector, reference: Any, depth: int) -> None:
    """The service of a resource this one points at (a referral, an appointment)."""
    if depth > 1 or not isinstance(reference, dict):
        return
    target = split_reference(str(reference.get("reference") or ""))
    if target is None or target[0] not in ("Appointment", "ServiceRequest"):
        return
    stored = found.uow.get(*target)
    if stored is not None and not stored.deleted:
        _service_of(found, stored.resource, depth + 1)
