"""Who is in an integrated care plan, and how to reach them: resolving the
references of a CarePlan / CareTeam to the resources they name.

Shared by validation (is every party reachable?), the narrative and the printable
document, so all three agree on who the parties are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway import codes
from gateway.store.indexer import split_reference
from gateway.store.unit_of_work import UnitOfWork


def resolve(uow: UnitOfWork, ref: dict[str, Any] | None, container: dict[str, Any] | None = None
            ) -> dict[str, Any] | None:
    """The resource a Reference points at: contained (``#id``) or stored (live only)."""
    reference = (ref or {}).get("reference", "")
    if reference.startswith("#") and container is not None:
        return next((c for c in container.get("contained") or () if c.get("id") == reference[1:]), None)
    target = split_reference(reference)
    if not target:
        return None
    stored = uow.get(*target)
    return None if stored is None or stored.deleted else stored.resource


def key_of(ref: dict[str, Any] | None) -> str:
    """'Type/id' of a literal reference (absolute URLs and _history stripped), else ''."""
    target = split_reference((ref or {}).get("reference", ""))
    return f"{target[0]}/{target[1]}" if target else ""


def human_name(names: Any) -> str:
    for name in names or ():
        if name.get("text"):
            return str(name["text"])
        parts = list(name.get("prefix") or ()) + list(name.get("given") or ()) + [name.get("family", "")]
        text = " ".join(p for p in parts if p)
        if text:
            return text
    return ""


def display_of(uow: UnitOfWork, ref: dict[str, Any] | None, container: dict[str, Any] | None = None) -> str:
    """A person's or organisation's name for a Reference (the resource's own name first)."""
    resource = resolve(uow, ref, container)
    name = ""
    if resource is not None:
        rtype = resource.get("resourceType")
        if rtype in ("Practitioner", "Patient", "RelatedPerson"):
            name = human_name(resource.get("name"))
        elif rtype == "PractitionerRole":
            person = resource.get("practitioner")
            who = display_of(uow, person) if person else ""
            org = display_of(uow, resource.get("organization")) if resource.get("organization") else ""
            name = f"{who} ({org})" if who and org else (who or org)
        else:
            name = str(resource.get("name") or "")
    return name or (ref or {}).get("display") or (ref or {}).get("reference", "") or "unnamed"


def channels(uow: UnitOfWork, resource: dict[str, Any] | None) -> list[str]:
    """How to reach a party: its telecoms and Endpoints (a PractitionerRole also through
    its practitioner and organisation)."""
    if resource is None:
        return []
    out = [f"{t.get('system', 'contact')}: {t['value']}" for t in resource.get("telecom") or () if t.get("value")]
    for endpoint_ref in resource.get("endpoint") or ():
        endpoint = resolve(uow, endpoint_ref, resource)
        address = (endpoint or {}).get("address") or endpoint_ref.get("display")
        if address:
            kind = ((endpoint or {}).get("connectionType") or {}).get("code", "endpoint")
            out.append(f"{kind}: {address}")
    if not out and resource.get("resourceType") == "PractitionerRole":
        for key in ("practitioner", "organization"):
            out += channels(uow, resolve(uow, resource.get(key)))
    return out


def has_role(participant: dict[str, Any], code: str) -> bool:
    return any(c.get("system") == codes.CARE_TEAM_ROLES and c.get("code") == code
               for role in participant.get("role") or () for c in role.get("coding") or ())


def role_text(participant: dict[str, Any]) -> str:
    names = []
    for role in participant.get("role") or ():
        text = role.get("text") or next((c.get("display") or c.get("code") for c in role.get("coding") or ()
                                         if c.get("display") or c.get("code")), "")
        if text:
            names.append(text)
    return ", ".join(names)


@dataclass(slots=True)
class Party:
    """One CareTeam participant, resolved."""

    index: int
    participant: dict[str, Any]
    member: dict[str, Any] | None  # the resource, None when it does not resolve
    name: str
    roles: str
    contact: list[str] = field(default_factory=list)
    on_behalf_of: str = ""

    @property
    def lead(self) -> bool:
        return has_role(self.participant, codes.ROLE_LEAD_PROFESSIONAL)


def parties(uow: UnitOfWork, team: dict[str, Any]) -> list[Party]:
    out = []
    for i, participant in enumerate(team.get("participant") or ()):
        member = resolve(uow, participant.get("member"), team)
        contact = channels(uow, member)
        org_ref = participant.get("onBehalfOf")
        on_behalf = display_of(uow, org_ref, team) if org_ref else ""
        if not contact and org_ref:  # reachable through the organisation they act for
            contact = channels(uow, resolve(uow, org_ref, team))
        out.append(Party(i, participant, member, display_of(uow, participant.get("member"), team),
                         role_text(participant), contact, on_behalf))
    return out
