"""The search parameters the gateway indexes and serves — data, not code.

Each row names a resource type, a parameter, its FHIR search type and the element
paths it reads (a small dotted subset of FHIRPath).  Indexing (``indexer.py``),
search (``search.py``) and the CapabilityStatement are all driven from this one
table, so adding a parameter is one line here plus a reindex.

``targets`` restricts a reference parameter to some resource types (``patient``
on Appointment is ``participant.actor`` where the actor is a Patient).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SearchParam:
    resource_type: str
    name: str
    type: str  # token | string | date | reference | quantity | number | uri
    paths: tuple[tuple[str, ...], ...]
    targets: tuple[str, ...] = ()

    @property
    def code(self) -> str:
        return self.name


# resource type, name, type, "path | path", targets
_TABLE: list[tuple[str, str, str, str, str]] = [
    # Every type
    ("*", "_id", "token", "id", ""),
    ("*", "_tag", "token", "meta.tag", ""),
    ("*", "_profile", "uri", "meta.profile", ""),
    ("*", "_source", "uri", "meta.source", ""),
    # Patient
    ("Patient", "identifier", "token", "identifier", ""),
    ("Patient", "name", "string", "name", ""),
    ("Patient", "family", "string", "name.family", ""),
    ("Patient", "given", "string", "name.given", ""),
    ("Patient", "birthdate", "date", "birthDate", ""),
    ("Patient", "gender", "token", "gender", ""),
    ("Patient", "general-practitioner", "reference", "generalPractitioner", ""),
    ("Patient", "organization", "reference", "managingOrganization", ""),
    ("Patient", "active", "token", "active", ""),
    ("Patient", "link", "reference", "link.other", ""),
    ("Patient", "address-postalcode", "string", "address.postalCode", ""),
    # Appointment
    ("Appointment", "identifier", "token", "identifier", ""),
    ("Appointment", "patient", "reference", "participant.actor", "Patient"),
    ("Appointment", "actor", "reference", "participant.actor", ""),
    ("Appointment", "practitioner", "reference", "participant.actor", "Practitioner"),
    ("Appointment", "location", "reference", "participant.actor", "Location"),
    ("Appointment", "status", "token", "status", ""),
    ("Appointment", "date", "date", "start", ""),
    ("Appointment", "service-type", "token", "serviceType", ""),
    ("Appointment", "appointment-type", "token", "appointmentType", ""),
    ("Appointment", "reason-code", "token", "reasonCode", ""),
    ("Appointment", "specialty", "token", "specialty", ""),
    ("Appointment", "based-on", "reference", "basedOn", ""),
    ("Appointment", "service-category", "token", "serviceCategory", ""),
    # Practitioner / Organization / Location / HealthcareService
    ("Practitioner", "identifier", "token", "identifier", ""),
    ("Practitioner", "name", "string", "name", ""),
    ("Practitioner", "family", "string", "name.family", ""),
    ("Practitioner", "given", "string", "name.given", ""),
    ("PractitionerRole", "identifier", "token", "identifier", ""),
    ("PractitionerRole", "practitioner", "reference", "practitioner", ""),
    ("PractitionerRole", "organization", "reference", "organization", ""),
    ("PractitionerRole", "location", "reference", "location", ""),
    ("PractitionerRole", "service", "reference", "healthcareService", ""),
    ("PractitionerRole", "role", "token", "code", ""),
    ("PractitionerRole", "specialty", "token", "specialty", ""),
    ("Organization", "partof", "reference", "partOf", ""),
    ("Organization", "identifier", "token", "identifier", ""),
    ("Organization", "name", "string", "name", ""),
    ("Location", "identifier", "token", "identifier", ""),
    ("Location", "name", "string", "name", ""),
    ("Location", "organization", "reference", "managingOrganization", ""),
    ("HealthcareService", "identifier", "token", "identifier", ""),
    ("HealthcareService", "name", "string", "name", ""),
    ("HealthcareService", "service-type", "token", "type", ""),
    # Flag, Task, CarePlan ... (their features come in later issues; the index is ready)
    ("Flag", "identifier", "token", "identifier", ""),
    ("Flag", "patient", "reference", "subject", "Patient"),
    ("Flag", "subject", "reference", "subject", ""),
    ("Flag", "status", "token", "status", ""),
    ("Flag", "category", "token", "category", ""),
    ("Flag", "code", "token", "code", ""),
    ("Flag", "date", "date", "period", ""),
    ("Flag", "author", "reference", "author", ""),
    ("Task", "identifier", "token", "identifier", ""),
    ("Task", "patient", "reference", "for", "Patient"),
    ("Task", "subject", "reference", "for", ""),
    ("Task", "for", "reference", "for", ""),
    ("Task", "requester", "reference", "requester", ""),
    ("Task", "based-on", "reference", "basedOn", ""),
    ("Task", "status", "token", "status", ""),
    ("Task", "owner", "reference", "owner", ""),
    ("Task", "focus", "reference", "focus", ""),
    ("Task", "code", "token", "code", ""),
    ("Task", "authored-on", "date", "authoredOn", ""),
    ("Task", "business-status", "token", "businessStatus", ""),
    ("ServiceRequest", "identifier", "token", "identifier", ""),
    ("ServiceRequest", "patient", "reference", "subject", "Patient"),
    ("ServiceRequest", "subject", "reference", "subject", ""),
    ("ServiceRequest", "status", "token", "status", ""),
    ("ServiceRequest", "code", "token", "code", ""),
    ("ServiceRequest", "requester", "reference", "requester", ""),
    ("ServiceRequest", "performer", "reference", "performer", ""),
    ("ServiceRequest", "authored", "date", "authoredOn", ""),
    ("Condition", "identifier", "token", "identifier", ""),
    ("Condition", "patient", "reference", "subject", "Patient"),
    ("Condition", "subject", "reference", "subject", ""),
    ("Condition", "code", "token", "code", ""),
    ("Condition", "clinical-status", "token", "clinicalStatus", ""),
    ("Condition", "category", "token", "category", ""),
    ("Condition", "onset-date", "date", "onsetDateTime | onsetPeriod", ""),
    ("Encounter", "patient", "reference", "subject", "Patient"),
    ("Encounter", "subject", "reference", "subject", ""),
    ("Encounter", "practitioner", "reference", "participant.individual", "Practitioner"),
    ("Encounter", "participant", "reference", "participant.individual", ""),
    ("Encounter", "location", "reference", "location.location", ""),
    ("Encounter", "appointment", "reference", "appointment", ""),
    ("Encounter", "date", "date", "period", ""),
    ("Encounter", "status", "token", "status", ""),
    ("Encounter", "class", "token", "class", ""),
    ("Encounter", "identifier", "token", "identifier", ""),
    ("CarePlan", "identifier", "token", "identifier", ""),
    ("CarePlan", "patient", "reference", "subject", "Patient"),
    ("CarePlan", "subject", "reference", "subject", ""),
    ("CarePlan", "status", "token", "status", ""),
    ("CarePlan", "category", "token", "category", ""),
    ("CarePlan", "care-team", "reference", "careTeam", ""),
    ("CarePlan", "date", "date", "period", ""),
    ("CarePlan", "intent", "token", "intent", ""),
    ("CareTeam", "identifier", "token", "identifier", ""),
    ("CareTeam", "patient", "reference", "subject", "Patient"),
    ("CareTeam", "subject", "reference", "subject", ""),
    ("CareTeam", "participant", "reference", "participant.member", ""),
    ("CareTeam", "status", "token", "status", ""),
    ("CareTeam", "category", "token", "category", ""),
    # Subscription (notify/subscriptions.py)
    ("Subscription", "status", "token", "status", ""),
    ("Subscription", "criteria", "string", "criteria", ""),
    ("Subscription", "type", "token", "channel.type", ""),
    ("Subscription", "url", "uri", "channel.endpoint", ""),
    # EpisodeOfCare: a service's episode ending after a WNB is a rules R4 trigger
    ("EpisodeOfCare", "identifier", "token", "identifier", ""),
    ("EpisodeOfCare", "patient", "reference", "patient", "Patient"),
    ("EpisodeOfCare", "status", "token", "status", ""),
    ("EpisodeOfCare", "organization", "reference", "managingOrganization", ""),
    ("EpisodeOfCare", "date", "date", "period", ""),
    # GP records (gprecords/): coded entries, devices, provenance
    ("Observation", "identifier", "token", "identifier", ""),
    ("Observation", "patient", "reference", "subject", "Patient"),
    ("Observation", "subject", "reference", "subject", ""),
    ("Observation", "code", "token", "code", ""),
    ("Observation", "status", "token", "status", ""),
    ("Observation", "category", "token", "category", ""),
    ("Observation", "date", "date", "effectiveDateTime | effectivePeriod", ""),
    ("Observation", "encounter", "reference", "encounter", ""),
    ("Device", "identifier", "token", "identifier", ""),
    ("Endpoint", "identifier", "token", "identifier", ""),
    ("Provenance", "target", "reference", "target", ""),
    ("Provenance", "recorded", "date", "recorded", ""),
]

RESOURCE_TYPES: tuple[str, ...] = (
    "Patient", "Appointment", "Practitioner", "PractitionerRole", "Organization", "Location",
    "HealthcareService", "Condition", "Encounter", "Flag", "CarePlan", "CareTeam",
    "ServiceRequest", "Task", "Subscription", "Provenance", "Device", "Endpoint", "Observation",
    "EpisodeOfCare",
)


def _build() -> dict[str, dict[str, SearchParam]]:
    by_type: dict[str, dict[str, SearchParam]] = {t: {} for t in RESOURCE_TYPES}
    common = [row for row in _TABLE if row[0] == "*"]
    for rtype in RESOURCE_TYPES:
        for _star, name, ptype, paths, targets in common:
            by_type[rtype][name] = _param(rtype, name, ptype, paths, targets)
    for rtype, name, ptype, paths, targets in _TABLE:
        if rtype == "*":
            continue
        by_type.setdefault(rtype, {})[name] = _param(rtype, name, ptype, paths, targets)
    return by_type


def _param(rtype: str, name: str, ptype: str, paths: str, targets: str) -> SearchParam:
    parsed = tuple(tuple(p.strip().split(".")) for p in paths.split("|"))
    return SearchParam(rtype, name, ptype, parsed, tuple(t for t in targets.split(",") if t))


SEARCH_PARAMS: dict[str, dict[str, SearchParam]] = _build()


def params_for(resource_type: str) -> dict[str, SearchParam]:
    return SEARCH_PARAMS.get(resource_type, {})


def indexed_params(resource_type: str) -> list[SearchParam]:
    """Parameters whose values are written to the index tables (``_id`` is the key itself)."""
    return [p for p in params_for(resource_type).values() if p.name != "_id"]


def reference_params() -> list[tuple[str, str]]:
    """(resource type, parameter) for every reference parameter, e.g. to find referrers."""
    return [(rtype, p.name) for rtype, params in SEARCH_PARAMS.items() for p in params.values()
            if p.type == "reference"]
