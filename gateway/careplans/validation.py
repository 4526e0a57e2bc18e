"""What makes an integrated care plan acceptable (case review Themes 2 and 3).

Checked on every write of a CarePlan or CareTeam, whatever its source (a refusal is
a 422 OperationOutcome naming the element; nothing is stored):

CareTeam
  * ``subject`` is a Patient that exists;
  * exactly one **lead professional**: a participant with role
    ``CARE_TEAM_ROLES|lead-professional`` whose member is a Practitioner or PractitionerRole;
  * the child's **registered GP practice** (``Patient.generalPractitioner``) is a
    participant -- added automatically (role ``registered-gp-practice``) when missing;
  * every participant is **reachable**: its member (or the organisation it acts
    ``onBehalfOf``) has a telecom or an Endpoint.

CarePlan
  * ``subject`` is a Patient that exists; ``careTeam`` names at least one CareTeam of
    the same Patient, with its lead;
  * it states **how information is exchanged**: extension ``EXT_INFORMATION_EXCHANGE``
    (valueMarkdown or valueString);
  * an activity performed by a **commissioned / contracted service** (a CareTeam member
    with role ``commissioned-service``, or an activity that carries the extension)
    states its liaison and communication duties: extension ``EXT_COMMISSIONED_DUTIES``
    with sub-extensions ``liaison`` and ``communication`` (valueString / valueMarkdown);
  * ``text`` is (re)generated on every write (narrative.py).

A plan or team ``entered-in-error`` is not checked (it is being withdrawn).
When a CareTeam changes, the narratives of the CarePlans that use it are regenerated
(a new CarePlan version, so every party is told).
"""

from __future__ import annotations

from typing import Any

from gateway import codes
from gateway.careplans import parties as P
from gateway.careplans.narrative import render_narrative
from gateway.store.hooks import WriteRejected, after_changes, before_write
from gateway.store.search import matching_ids
from gateway.store.unit_of_work import Change, Stored, UnitOfWork

PROFESSIONAL_TYPES = ("Practitioner", "PractitionerRole")
WITHDRAWN = "entered-in-error"


def ext_path(base: str, url: str) -> str:
    return f"{base}.extension('{url}')"


def require_patient(uow: UnitOfWork, resource: dict[str, Any], element: str) -> dict[str, Any]:
    ref = resource.get("subject")
    key = P.key_of(ref)
    if not key:
        raise WriteRejected(f"{element} must reference the child's Patient (Patient/<id>)", expression=[element],
                            code="required")
    if not key.startswith("Patient/"):
        raise WriteRejected(f"{element} must be a Patient, not {key}", expression=[element])
    patient = P.resolve(uow, ref)
    if patient is None:
        raise WriteRejected(f"{element} refers to {key}, which does not exist", expression=[element],
                            code="not-found")
    return patient


# --- CareTeam -------------------------------------------------------------------------------
@before_write("CareTeam")
def check_care_team(uow: UnitOfWork, resource: dict[str, Any], before: Stored | None) -> dict[str, Any] | None:
    if resource.get("status") == WITHDRAWN:
        return None
    patient = require_patient(uow, resource, "CareTeam.subject")
    team = {**resource, "participant": [dict(p) for p in resource.get("participant") or ()]}
    _check_lead(uow, team)
    _add_registered_gp(team, patient)
    _check_reachable(uow, team)
    return team


def _check_lead(uow: UnitOfWork, team: dict[str, Any]) -> None:
    leads = [i for i, p in enumerate(team["participant"]) if P.has_role(p, codes.ROLE_LEAD_PROFESSIONAL)]
    if not leads:
        raise WriteRejected(
            f"the care team has no lead professional: one participant needs role "
            f"{codes.CARE_TEAM_ROLES}|{codes.ROLE_LEAD_PROFESSIONAL} (the lead must be explicit)",
            expression=["CareTeam.participant"], code="required")
    if len(leads) > 1:
        raise WriteRejected(f"the care team names {len(leads)} lead professionals (participants "
                            f"{', '.join(map(str, leads))}); exactly one leads",
                            expression=[f"CareTeam.participant[{leads[1]}].role"])
    i = leads[0]
    key = P.key_of(team["participant"][i].get("member"))
    contained = (team["participant"][i].get("member") or {}).get("reference", "").startswith("#")
    member = P.resolve(uow, team["participant"][i].get("member"), team)
    rtype = (member or {}).get("resourceType") if contained else key.split("/")[0]
    if rtype not in PROFESSIONAL_TYPES:
        raise WriteRejected(f"the lead professional must be a Practitioner or PractitionerRole, not "
                            f"{rtype or 'an unresolved reference'}", expression=[f"CareTeam.participant[{i}].member"])


def _add_registered_gp(team: dict[str, Any], patient: dict[str, Any]) -> None:
    """The GP practice is always a party (Theme 3 rec. 1): add it, or mark it, by role."""
    gps = list(patient.get("generalPractitioner") or ())
    practices = [g for g in gps if P.key_of(g).startswith("Organization/")] or gps[:1]
    role = {"coding": [{"system": codes.CARE_TEAM_ROLES, "code": codes.ROLE_REGISTERED_GP,
                        "display": "Registered GP practice"}]}
    for gp in practices:
        key = P.key_of(gp)
        if not key:
            continue
        existing = next((p for p in team["participant"] if P.key_of(p.get("member")) == key), None)
        if existing is None:
            member = {"reference": key}
            if gp.get("display"):
                member["display"] = gp["display"]
            team["participant"].append({"role": [role], "member": member})
        elif not P.has_role(existing, codes.ROLE_REGISTERED_GP):
            existing["role"] = list(existing.get("role") or ()) + [role]


def _check_reachable(uow: UnitOfWork, team: dict[str, Any]) -> None:
    for party in P.parties(uow, team):
        where = f"CareTeam.participant[{party.index}].member"
        ref = party.participant.get("member")
        if party.member is None:
            what = (ref or {}).get("reference") or (ref or {}).get("display") or "nothing"
            raise WriteRejected(f"participant {party.index} ({what}) does not resolve to a stored resource, so "
                                f"nobody can tell how to reach them", expression=[where], code="not-found")
        if not party.contact:
            gp = " (the registered GP practice, added automatically)" if P.has_role(
                party.participant, codes.ROLE_REGISTERED_GP) else ""
            raise WriteRejected(
                f"participant {party.index}, {party.name}{gp}, has no way to be reached: add a telecom or an "
                f"Endpoint to {P.key_of(ref) or 'the member'} (or to the organisation in onBehalfOf)",
                expression=[where])


# --- CarePlan -------------------------------------------------------------------------------
@before_write("CarePlan")
def check_care_plan(uow: UnitOfWork, resource: dict[str, Any], before: Stored | None) -> dict[str, Any]:
    if resource.get("status") == WITHDRAWN:
        return {**resource, "text": {"status": "generated", "div": render_narrative(uow, resource)}}
    patient = require_patient(uow, resource, "CarePlan.subject")
    teams = _care_teams(uow, resource)
    _check_information_exchange(resource)
    _check_commissioned_duties(uow, resource, teams)
    del patient
    return {**resource, "text": {"status": "generated", "div": render_narrative(uow, resource)}}


def _care_teams(uow: UnitOfWork, plan: dict[str, Any]) -> list[dict[str, Any]]:
    refs = plan.get("careTeam") or []
    if not refs:
        raise WriteRejected("the plan names no CareTeam: an integrated care plan needs a CareTeam with its lead "
                            "professional and every agency involved", expression=["CarePlan.careTeam"],
                            code="required")
    teams = []
    for i, ref in enumerate(refs):
        team = P.resolve(uow, ref, plan)
        if team is None:
            raise WriteRejected(f"CarePlan.careTeam[{i}] ({ref.get('reference', '')}) does not exist",
                                expression=[f"CarePlan.careTeam[{i}]"], code="not-found")
        if P.key_of(team.get("subject")) != P.key_of(plan.get("subject")):
            raise WriteRejected(f"CarePlan.careTeam[{i}] is the care team of another patient",
                                expression=[f"CarePlan.careTeam[{i}]"])
        teams.append(team)
    if not any(P.has_role(p, codes.ROLE_LEAD_PROFESSIONAL) for t in teams for p in t.get("participant") or ()):
        raise WriteRejected("the plan's care team has no lead professional", expression=["CarePlan.careTeam"])
    return teams


def _text_value(ext: dict[str, Any]) -> str:
    return str(ext.get("valueMarkdown") or ext.get("valueString") or "").strip()


def _check_information_exchange(plan: dict[str, Any]) -> None:
    found = [e for e in plan.get("extension") or () if e.get("url") == codes.EXT_INFORMATION_EXCHANGE]
    if not found or not _text_value(found[0]):
        raise WriteRejected(
            "the plan does not state how information is exchanged between the parties: add extension "
            f"{codes.EXT_INFORMATION_EXCHANGE} (valueMarkdown: who tells whom what, how and when)",
            expression=[ext_path("CarePlan", codes.EXT_INFORMATION_EXCHANGE)], code="required")


def commissioned_members(uow: UnitOfWork, teams: list[dict[str, Any]]) -> set[str]:
    return {P.key_of(p.get("member")) for t in teams for p in t.get("participant") or ()
            if P.has_role(p, codes.ROLE_COMMISSIONED_SERVICE) and P.key_of(p.get("member"))}


def duties_of(activity: dict[str, Any]) -> dict[str, str] | None:
    """{'liaison': ..., 'communication': ...} from the activity's duties extension, or None."""
    ext = next((e for e in activity.get("extension") or () if e.get("url") == codes.EXT_COMMISSIONED_DUTIES), None)
    if ext is None:
        return None
    return {sub.get("url", ""): _text_value(sub) for sub in ext.get("extension") or ()}


def _check_commissioned_duties(uow: UnitOfWork, plan: dict[str, Any], teams: list[dict[str, Any]]) -> None:
    commissioned = commissioned_members(uow, teams)
    for i, activity in enumerate(plan.get("activity") or ()):
        performers = {P.key_of(r) for r in (activity.get("detail") or {}).get("performer") or ()}
        for ref in (activity.get("detail") or {}).get("performer") or ():  # a person of a commissioned org
            role = P.resolve(uow, ref, plan)
            if role and role.get("resourceType") == "PractitionerRole":
                performers.add(P.key_of(role.get("organization")))
        duties = duties_of(activity)
        if duties is None and not performers & commissioned:
            continue
        where = ext_path(f"CarePlan.activity[{i}]", codes.EXT_COMMISSIONED_DUTIES)
        missing = [k for k in ("liaison", "communication") if not (duties or {}).get(k)]
        if missing:
            raise WriteRejected(
                f"activity {i} is performed by a commissioned/contracted service, so it must state that service's "
                f"{' and '.join(missing)} duties explicitly (extension {codes.EXT_COMMISSIONED_DUTIES} with "
                f"sub-extensions 'liaison' and 'communication')", expression=[where], code="required")


# --- a CareTeam change is a plan change -----------------------------------------------------
@after_changes(order=25, name="care-plan-narrative")
def refresh_plans(uow: UnitOfWork, changes: list[Change]) -> None:
    """Regenerate the narrative of every CarePlan whose CareTeam changed (who leads, who
    is involved and how to reach them are part of the plan in writing)."""
    seen: set[str] = set()
    for change in changes:
        if change.after.res_type != "CareTeam" or change.after.res_id in seen:
            continue
        seen.add(change.after.res_id)
        for plan_id in matching_ids(uow, "CarePlan", [("care-team", f"CareTeam/{change.after.res_id}")]):
            stored = uow.get("CarePlan", plan_id)
            if stored is None or stored.deleted:
                continue
            div = render_narrative(uow, stored.resource)
            if (stored.resource.get("text") or {}).get("div") != div:
                uow.update("CarePlan", plan_id, dict(stored.resource), before=stored)
