"""PRD (provider data, HL7 v2 chapter 11) -> the Practitioner / Organization /
PractitionerRole it names, as one Reference.

Why a converter that reads the whole segment: a PRD is one provider spread over
several fields (name PRD-2, identifiers PRD-7, telecom PRD-5, organisation PRD-10
...) and its role (PRD-1) decides where the reference goes (referring provider ->
``requester``, referred-to provider -> ``performer``).  Field rules see one field
at a time, so the rule is anchored on PRD-1 and this converter reads the rest.

Registered as ``PRD[Reference]`` (options: ``roles``, the table 0286 codes the rule
takes) in :data:`gateway.mapping.datatypes.CONVERTERS` on import.
"""

from __future__ import annotations

from typing import Any

from gateway.hl7v2.parser import Segment
from gateway.mapping.context import CodeMap, MapContext
from gateway.mapping.datatypes import (
    CONVERTERS,
    Converter,
    _check_args,
    _display_name,
    _identifier,
    cwe_to_codeable_concept,
    realize,
    texts,
    xad_to_address,
    xon_organization,
    xpn_to_human_name,
    xtn_to_contact_point,
)

V2_0286 = "http://terminology.hl7.org/CodeSystem/v2-0286"

__all__ = ["prd_reference"]


def _reps(seg: Segment, n: int, ctx: MapContext) -> list[list[str]]:
    """Field n as a list of repetitions, each a list of raw components."""
    enc = ctx.enc
    return [rep.split(enc.component) for rep in seg.repetitions(n) if rep and rep != '""']


def _roles(seg: Segment, ctx: MapContext) -> list[dict[str, Any]]:
    concepts = []
    for comps in _reps(seg, 1, ctx):
        concept = cwe_to_codeable_concept(comps, ctx)
        if concept:
            for coding in concept.get("coding", ()):
                coding.setdefault("system", V2_0286)
            concepts.append(concept)
    return concepts


def _telecoms(seg: Segment, n: int, ctx: MapContext) -> list[dict[str, Any]]:
    return [p for p in (xtn_to_contact_point(c, ctx, default_use="work") for c in _reps(seg, n, ctx)) if p]


def _practitioner(seg: Segment, ctx: MapContext) -> tuple[dict[str, Any] | None, str]:
    """(Practitioner resource or None, display name).  PRD-7 PLN: -1 id, -2 id type
    (table 0338, e.g. GMC -> the GMC number system via identifier-systems.csv)."""
    names = [n for n in (xpn_to_human_name(c, ctx) for c in _reps(seg, 2, ctx)) if n]
    display = _display_name(names[0]) if names else ""
    identifiers = []
    for comps in _reps(seg, 7, ctx):
        value, id_type = texts(comps, 2, ctx.enc)
        if value:
            identifiers.append(_identifier(ctx, value, id_type, "", "", "", "practitioner", None))
    if not identifiers:
        return None, display
    resource: dict[str, Any] = {"resourceType": "Practitioner", "identifier": identifiers}
    if names:
        resource["name"] = names
    _add_contacts(resource, seg, ctx, telecom_field=5, address_field=3)
    return resource, display


def _organization(seg: Segment, ctx: MapContext) -> tuple[dict[str, Any] | None, str]:
    reps = _reps(seg, 10, ctx)
    if not reps:
        return None, ""
    implied = xon_organization(reps[0], ctx)
    if implied is None:
        return None, ""
    if isinstance(implied, dict):  # a name without an id: display only
        return None, implied.get("display", "")
    resource = dict(implied.resource)
    _add_contacts(resource, seg, ctx, telecom_field=13, address_field=11)
    return resource, implied.display


def _add_contacts(resource: dict[str, Any], seg: Segment, ctx: MapContext, *, telecom_field: int,
                  address_field: int) -> None:
    """telecom (XTN) and address (XAD) from the PRD fields that hold them, when present."""
    telecom = _telecoms(seg, telecom_field, ctx)
    if telecom:
        resource["telecom"] = telecom
    addresses = [a for a in (xad_to_address(c, ctx) for c in _reps(seg, address_field, ctx)) if a]
    if addresses:
        resource["address"] = addresses


def prd_reference(seg: Segment, ctx: MapContext, roles: frozenset[str]) -> dict[str, Any] | None:
    """The Reference for one PRD whose PRD-1 has one of ``roles`` (None otherwise)."""
    role_concepts = _roles(seg, ctx)
    codes = {(c.get("code") or "").upper() for rc in role_concepts for c in rc.get("coding", ())}
    if roles and not codes & roles:
        return None
    practitioner, person = _practitioner(seg, ctx)
    organization, org_name = _organization(seg, ctx)
    org_url = ctx.add_intent("Organization", organization, "organization") if organization else None
    if practitioner is None:
        if org_url:
            return {"reference": org_url, "display": org_name} if org_name else {"reference": org_url}
        display = person or org_name
        return {"display": display} if display else None
    prac_url = ctx.add_intent("Practitioner", practitioner, "practitioner")
    if org_url is None:
        return {"reference": prac_url, "display": person} if person else {"reference": prac_url}
    # Both: the person in this organisation, reachable as such (PRD-5 is how to reach them there).
    prac_id, org_id = practitioner["identifier"][0], organization["identifier"][0]  # type: ignore[index]
    role: dict[str, Any] = {
        "resourceType": "PractitionerRole",
        "identifier": [{"system": ctx.naming.local_system(ctx.sender, "practitioner-role"),
                        "value": f"{prac_id['value']}@{org_id['value']}"}],
        "active": True,
        "practitioner": {"reference": prac_url, **({"display": person} if person else {})},
        "organization": {"reference": org_url, **({"display": org_name} if org_name else {})},
    }
    if role_concepts:
        role["code"] = role_concepts
    telecom = practitioner.get("telecom")
    if telecom:
        role["telecom"] = telecom
    role_url = ctx.add_intent("PractitionerRole", role, "practitioner-role")
    display = f"{person} ({org_name})" if person and org_name else (person or org_name)
    return {"reference": role_url, "display": display} if display else {"reference": role_url}


def _prd_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    _check_args(name, args, {"roles"})
    roles = frozenset(str(r).upper() for r in args.get("roles") or ())

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> dict[str, Any] | None:
        return realize(ctx, prd_reference(seg, ctx, roles))
    return convert


CONVERTERS["PRD[Reference]"] = _prd_factory
