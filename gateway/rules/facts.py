"""One child's joined-up record, as the rules see it.

Everything about the child that any rule reads, gathered in one pass through the
reference index (one SQL statement): appointments from every source (hospital PAS,
community services, GP records — all Appointments naming the Patient), Flags
(markers and the rules' own), Tasks, ServiceRequests, CarePlans, CareTeams and
EpisodesOfCare.  Rules are pure functions of this record and a clock.

"Which service" an appointment belongs to is decided here (``service_of``); see
docs/rules.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from gateway import codes
from gateway.rules.config import RulesConfig
from gateway.store.indexer import split_reference
from gateway.store.unit_of_work import UnitOfWork, loads

CANCELLATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"

# (resource type, reference search parameter naming the Patient)
_PATIENT_LINKS = (("Appointment", "patient"), ("Flag", "patient"), ("Task", "patient"),
                  ("ServiceRequest", "patient"), ("CarePlan", "patient"), ("CareTeam", "patient"),
                  ("EpisodeOfCare", "patient"))
_LINK_SQL = ("SELECT DISTINCT r.res_type, r.content FROM idx_reference x JOIN resources r "
             "ON r.res_type = x.res_type AND r.res_id = x.res_id AND NOT r.deleted "
             "WHERE x.target_type = 'Patient' AND x.target_id = ? AND x.param = 'patient' "
             "AND x.res_type IN ('Appointment','Flag','Task','ServiceRequest','CarePlan','CareTeam','EpisodeOfCare')")


def parse_instant(value: str | None) -> datetime | None:
    """A FHIR date/dateTime/instant as an aware datetime (no zone -> UTC; a date -> its midnight)."""
    if not value or not isinstance(value, str):
        return None
    try:
        if len(value) == 4:
            moment = datetime(int(value), 1, 1)
        elif len(value) == 7:
            moment = datetime(int(value[:4]), int(value[5:7]), 1)
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_date(value: str | None) -> date | None:
    moment = parse_instant(value)
    return moment.date() if moment else None


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months (a 12-month window from 29 Feb ends on 28 Feb)."""
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    day = min(moment.day, [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28, 31, 30, 31, 30,
                           31, 31, 30, 31, 30, 31][month - 1])
    return moment.replace(year=year, month=month, day=day)


def ref_of(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or () if isinstance(c, dict)]


def concept_label(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in codings(concept):
        if coding.get("display"):
            return str(coding["display"])
    for coding in codings(concept):
        if coding.get("code"):
            return str(coding["code"])
    return ""


def has_code(concept: Any, system: str, code: str) -> bool:
    return any(c.get("system") == system and c.get("code") == code for c in codings(concept))


def service_of(appointment: dict[str, Any], cfg: RulesConfig) -> tuple[str, str]:
    """(key, label) of the service an appointment belongs to.

    In order: serviceType (AIS-3 on hospital feeds), specialty, serviceCategory, the
    HealthcareService participant, the Location participant (GP-record appointments
    often name only the surgery), and last the sending system (meta.source).  The key
    is the lower-cased label after the rules file's aliases, so "Dietetics" from the
    PAS and "dietetics" from a community system are one service.
    """
    for element in ("serviceType", "specialty", "serviceCategory"):
        for concept in appointment.get(element) or ():
            label = concept_label(concept)
            if label:
                key = cfg.canonical_service(label)
                return key, key
    for wanted in ("HealthcareService", "Location"):
        for participant in appointment.get("participant") or ():
            actor = participant.get("actor") or {}
            target = split_reference(actor.get("reference", ""))
            if target and target[0] == wanted and actor.get("display"):
                key = cfg.canonical_service(actor["display"])
                return key, key
    source = (appointment.get("meta") or {}).get("source") or ""
    if source:
        label = source
        if source.startswith("urn:hl7v2:"):
            parts = source.split(":")
            label = f"{parts[2]} ({parts[3]})" if len(parts) >= 4 else source
        return "source:" + source.lower(), f"appointments from {label}"
    return "unspecified", "an unspecified service"


@dataclass(slots=True)
class Appt:
    """An appointment as the rules weigh it."""

    id: str
    status: str
    start: datetime | None
    service_key: str
    service_label: str
    source: str
    child_at_date: bool
    patient_cancelled: bool = False
    provider_cancelled: bool = False
    discharged: bool = False
    carer_reason: str = ""
    resource: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"Appointment/{self.id}"

    @property
    def day(self) -> str:
        return self.start.date().isoformat() if self.start else "an unknown date"


@dataclass
class ChildRecord:
    patient_id: str
    patient: dict[str, Any]
    appointments: list[Appt]
    flags: list[dict[str, Any]]
    tasks: list[dict[str, Any]]
    service_requests: list[dict[str, Any]]
    care_plans: list[dict[str, Any]]
    care_teams: list[dict[str, Any]]
    episodes: list[dict[str, Any]]

    @property
    def patient_ref(self) -> str:
        return f"Patient/{self.patient_id}"

    def active_markers(self) -> dict[str, dict[str, Any]]:
        """Active marker Flags (complex needs, CP plan, looked after, safeguarding concern), by code."""
        found: dict[str, dict[str, Any]] = {}
        for flag in self.flags:
            if flag.get("status") != "active":
                continue
            for coding in codings(flag.get("code")):
                if coding.get("system") == codes.FLAG_CODES and coding.get("code") in codes.MARKER_FLAGS:
                    found.setdefault(coding["code"], flag)
        return found

    def rule_flags(self, rule_id: str) -> list[dict[str, Any]]:
        return [f for f in self.flags if rule_tag(f).split("|", 1)[0] == rule_id]

    def gp_ref(self) -> str:
        """The registered GP practice (Patient.generalPractitioner, an Organization first)."""
        refs = [gp.get("reference", "") for gp in self.patient.get("generalPractitioner") or ()
                if isinstance(gp, dict)]
        for ref in refs:
            target = split_reference(ref)
            if target and target[0] == "Organization":
                return f"Organization/{target[1]}"
        for ref in refs:
            target = split_reference(ref)
            if target:
                return f"{target[0]}/{target[1]}"
        return ""

    def lead_ref(self) -> str:
        """The lead professional: a CareTeam participant (role lead-professional) of the
        child's active care team — the one an active CarePlan names first."""
        teams = {t["id"]: t for t in self.care_teams if t.get("status", "active") == "active"}
        ordered: list[dict[str, Any]] = []
        for plan in self.care_plans:
            if plan.get("status") == "active":
                for team_ref in plan.get("careTeam") or ():
                    target = split_reference((team_ref or {}).get("reference", ""))
                    if target and target[1] in teams:
                        ordered.append(teams[target[1]])
        ordered += list(teams.values())
        for team in ordered:
            for participant in team.get("participant") or ():
                roles = participant.get("role") or ()
                if any(has_code(r, codes.CARE_TEAM_ROLES, codes.ROLE_LEAD_PROFESSIONAL) for r in roles):
                    target = split_reference((participant.get("member") or {}).get("reference", ""))
                    if target:
                        return f"{target[0]}/{target[1]}"
        return ""

    def has_active_care_plan(self) -> bool:
        return any(p.get("status") == "active" for p in self.care_plans)


def rule_tag(resource: dict[str, Any]) -> str:
    for ext in resource.get("extension") or ():
        if ext.get("url") == codes.EXT_RULE:
            return str(ext.get("valueString") or ext.get("valueCanonical") or "")
    return ""


def task_code(task: dict[str, Any]) -> str:
    for coding in codings(task.get("code")):
        if coding.get("system") == codes.TASK_CODES:
            return coding.get("code", "")
    return ""


def is_child_on(birth: date | None, when: datetime | None, age_under: int) -> bool:
    """Under ``age_under`` on that day.  Unknown birth date or unknown day: counted as a
    child — a missed appointment is not ignored because a feed left PID-7 empty."""
    if birth is None or when is None:
        return True
    day = when.date()
    try:
        limit = birth.replace(year=birth.year + age_under)
    except ValueError:  # born 29 February
        limit = birth.replace(year=birth.year + age_under, day=28)
    return day < limit


def to_appt(resource: dict[str, Any], birth: date | None, cfg: RulesConfig) -> Appt:
    status = resource.get("status", "")
    start = parse_instant(resource.get("start"))
    key, label = service_of(resource, cfg)
    reason = resource.get("cancelationReason")
    reason_codes = {str(c.get("code", "")).lower() for c in codings(reason) if c.get("code")}
    discharged = bool(reason_codes & cfg.discharge_codes)
    patient_cancelled = provider_cancelled = False
    if status in cfg.cancelled_statuses and not discharged:
        patient_cancelled = any(cfg.is_patient_cancellation(c) for c in reason_codes)
        provider_cancelled = not patient_cancelled
    carer_reason = ""
    if status in cfg.wnb_statuses or patient_cancelled:
        parts = []
        if reason and not discharged and concept_label(reason):
            parts.append(concept_label(reason))
        if resource.get("comment"):
            parts.append(str(resource["comment"]))
        carer_reason = "; ".join(parts)
    return Appt(resource["id"], status, start, key, label, (resource.get("meta") or {}).get("source", ""),
                is_child_on(birth, start, cfg.child_age_under), patient_cancelled, provider_cancelled,
                discharged, carer_reason, resource)


def gather(uow: UnitOfWork, patient_id: str, cfg: RulesConfig) -> ChildRecord | None:
    stored = uow.get("Patient", patient_id)
    if stored is None or stored.deleted:
        return None
    patient = stored.resource
    birth = parse_date(patient.get("birthDate"))
    buckets: dict[str, list[dict[str, Any]]] = {t: [] for t, _p in _PATIENT_LINKS}
    for res_type, content in uow.fetchall(_LINK_SQL, (patient_id,)):
        buckets[res_type].append(loads(content))
    appointments = [to_appt(a, birth, cfg) for a in buckets["Appointment"]]
    appointments.sort(key=lambda a: (a.start or datetime.min.replace(tzinfo=timezone.utc), a.id))
    return ChildRecord(patient_id, patient, appointments, buckets["Flag"], buckets["Task"],
                       buckets["ServiceRequest"], buckets["CarePlan"], buckets["CareTeam"], buckets["EpisodeOfCare"])
