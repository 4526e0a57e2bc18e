"""GP Connect (FHIR STU3) -> FHIR R4, driven by ``mappings/stu3/resources.yaml``.

Why data: STU3 and R4 share most of every resource; what differs is a short list
of renames, cardinality changes and code maps, which reviewers can read (and a
supplier's dialect can extend) without reading Python.  The few structural
changes that are algorithms (a ReferralRequest's requester.agent, Observation
``related`` split by type) are named ``steps`` written here.

``convert(resource)`` returns ``Converted(resource, notes)``; ``resource`` is None for
a type the gateway does not store (List, MedicationStatement ...: skipped, counted).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import yaml

from gateway.settings import current_settings

_RULE_KEYS = {"to", "codes", "rename", "to_list", "first_of", "codeable", "to_note", "drop", "steps", "set"}
GPCONNECT_CANCELLATION_REASON = (
    "https://fhir.nhs.uk/STU3/StructureDefinition/Extension-GPConnect-AppointmentCancellationReason-1")


class Stu3ConfigError(ValueError):
    """The STU3 mapping file is wrong (checked once, at load time)."""


@dataclass(slots=True)
class Converted:
    resource: dict[str, Any] | None  # None: a type the gateway does not keep
    notes: list[str] = field(default_factory=list)  # what was dropped, for the import report


@dataclass(frozen=True, slots=True)
class TypeRule:
    source: str
    target: str
    codes: dict[str, dict[str, str | None]]
    rename: dict[str, str]
    to_list: tuple[str, ...]
    first_of: dict[str, str]
    codeable: dict[str, str]
    to_note: dict[str, str]
    drop: dict[str, str]
    steps: tuple[str, ...]
    set: dict[str, Any]


# --- named structural steps -------------------------------------------------------------------
def _requester_agent(r: dict[str, Any], notes: list[str]) -> None:
    """STU3 requester is {agent, onBehalfOf}; R4 requester is the agent's Reference."""
    requester = r.get("requester")
    if isinstance(requester, dict) and ("agent" in requester or "onBehalfOf" in requester):
        agent = requester.get("agent")
        if agent:
            r["requester"] = agent
        else:
            r.pop("requester")
        if requester.get("onBehalfOf"):
            notes.append("requester.onBehalfOf dropped (R4 has no such element)")


def _referral_type_and_service(r: dict[str, Any], notes: list[str]) -> None:
    """ReferralRequest.serviceRequested (0..*) / type -> ServiceRequest.code (0..1) and category."""
    services = r.pop("serviceRequested", None) or []
    kind = r.pop("type", None)
    if services:
        r["code"] = services[0]
        if len(services) > 1:
            r["orderDetail"] = list(services[1:])
        if kind:
            r.setdefault("category", []).append(kind)
    elif kind:
        r["code"] = kind


def _condition_abatement(r: dict[str, Any], notes: list[str]) -> None:
    """R4 has no abatementBoolean; 'true' means the problem is over (clinicalStatus resolved)."""
    if "abatementBoolean" in r:
        abated = r.pop("abatementBoolean")
        if abated and "clinicalStatus" not in r:
            r["clinicalStatus"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]}
        notes.append("abatementBoolean folded into clinicalStatus")


def _observation_related(r: dict[str, Any], notes: list[str]) -> None:
    """Observation.related {type, target} -> hasMember (has-member) or derivedFrom (the rest)."""
    for item in r.pop("related", None) or []:
        target = item.get("target")
        if not target:
            continue
        key = "hasMember" if item.get("type") == "has-member" else "derivedFrom"
        r.setdefault(key, []).append(target)


def _service_category(r: dict[str, Any], notes: list[str]) -> None:
    category = r.pop("serviceCategory", None)
    if category:
        r["category"] = [category]


def _gpconnect_appointment(r: dict[str, Any], notes: list[str]) -> None:
    """GP Connect carries the cancellation reason as an extension; R4 has cancelationReason."""
    kept = []
    for ext in r.get("extension") or []:
        if ext.get("url") == GPCONNECT_CANCELLATION_REASON and ext.get("valueString"):
            r.setdefault("cancelationReason", {"text": ext["valueString"]})
        else:
            kept.append(ext)
    if "extension" in r:
        if kept:
            r["extension"] = kept
        else:
            del r["extension"]


STEPS: dict[str, Callable[[dict[str, Any], list[str]], None]] = {
    "requester-agent": _requester_agent,
    "referral-type-and-service": _referral_type_and_service,
    "condition-abatement": _condition_abatement,
    "observation-related": _observation_related,
    "service-category": _service_category,
    "gpconnect-appointment-extensions": _gpconnect_appointment,
}


# --- loading ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SystemMap:
    prefixes: tuple[tuple[str, str], ...]
    names: frozenset[str]

    def rename(self, system: str) -> str:
        for old, new in self.prefixes:
            if system.startswith(old):
                return new + system[len(old):]
        if system.startswith("http://hl7.org/fhir/") and system[len("http://hl7.org/fhir/"):] in self.names:
            return "http://terminology.hl7.org/CodeSystem/" + system[len("http://hl7.org/fhir/"):]
        return system


def load_rules(path: Path) -> dict[str, TypeRule]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    rules: dict[str, Any] = {}
    systems = doc.pop("_systems", None) or {}
    rules["_systems"] = SystemMap(tuple((systems.get("prefix") or {}).items()), frozenset(systems.get("names") or ()))
    for source, spec in doc.items():
        spec = spec or {}
        unknown = set(spec) - _RULE_KEYS
        if unknown:
            raise Stu3ConfigError(f"{path.name} {source}: unknown keys {sorted(unknown)}")
        for step in spec.get("steps") or ():
            if step not in STEPS:
                raise Stu3ConfigError(f"{path.name} {source}: unknown step {step!r}; known: {sorted(STEPS)}")
        rules[source] = TypeRule(
            source, spec.get("to", source), dict(spec.get("codes") or {}), dict(spec.get("rename") or {}),
            tuple(spec.get("to_list") or ()), dict(spec.get("first_of") or {}), dict(spec.get("codeable") or {}),
            dict(spec.get("to_note") or {}), dict(spec.get("drop") or {}), tuple(spec.get("steps") or ()),
            dict(spec.get("set") or {}))
    return rules


@lru_cache(maxsize=4)
def _rules_at(path: str) -> dict[str, TypeRule]:
    return load_rules(Path(path))


def rules() -> dict[str, TypeRule]:
    return _rules_at(str(current_settings().mappings_dir / "stu3" / "resources.yaml"))


def r4_type(stu3_type: str) -> str | None:
    rule = rules().get(stu3_type) if not stu3_type.startswith("_") else None
    return rule.target if rule else None


def _rename_systems(node: Any, systems: SystemMap) -> None:
    """Coding.system values HL7 moved to terminology.hl7.org in R4, everywhere in a resource."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "system" and isinstance(value, str) and value.startswith("http://hl7.org/fhir/"):
                node[key] = systems.rename(value)
            elif isinstance(value, (dict, list)):
                _rename_systems(value, systems)
    elif isinstance(node, list):
        for item in node:
            _rename_systems(item, systems)


# --- conversion -------------------------------------------------------------------------------
def _holders(node: dict[str, Any], path: list[str]) -> list[dict[str, Any]]:
    """The objects holding the last step of a dotted path (lists flattened)."""
    current = [node]
    for step in path[:-1]:
        nxt: list[dict[str, Any]] = []
        for item in current:
            child = item.get(step)
            for c in child if isinstance(child, list) else [child]:
                if isinstance(c, dict):
                    nxt.append(c)
        current = nxt
    return current


def convert(resource: dict[str, Any]) -> Converted:
    """One STU3 resource as R4 (a new dict; the input is not changed)."""
    rtype = resource.get("resourceType", "")
    rule = rules().get(rtype) if not rtype.startswith("_") else None
    if rule is None:
        return Converted(None, [f"{rtype} is not kept by the gateway"])
    r = copy.deepcopy(resource)
    notes: list[str] = []
    _rename_systems(r, rules()["_systems"])
    r["resourceType"] = rule.target
    meta = r.get("meta")
    if isinstance(meta, dict) and meta.pop("profile", None) is not None:
        # An STU3 (GP Connect) profile is not an R4 profile: claiming it would be wrong.
        notes.append("meta.profile (STU3 profiles) dropped")
        if not meta:
            del r["meta"]
    for element, mapping in rule.codes.items():
        value = r.get(element)
        if isinstance(value, str) and value in mapping:
            if mapping[value] is None:
                del r[element]
                notes.append(f"{element} '{value}' has no R4 equivalent; dropped")
            else:
                r[element] = mapping[value]
    for old, new in rule.rename.items():
        path = old.split(".")
        for holder in _holders(r, path):
            if path[-1] in holder:
                holder[new.split(".")[-1]] = holder.pop(path[-1])
    for dotted in rule.to_list:
        path = dotted.split(".")
        for holder in _holders(r, path):
            value = holder.get(path[-1])
            if value is not None and not isinstance(value, list):
                holder[path[-1]] = [value]
    for old, new in rule.first_of.items():
        value = r.pop(old, None)
        if isinstance(value, list) and value:
            r[new] = value[0]
            if len(value) > 1:
                notes.append(f"{old}: only the first of {len(value)} kept (R4 allows one)")
    for element, system in rule.codeable.items():
        value = r.get(element)
        if isinstance(value, str):
            r[element] = {"coding": [{"system": system, "code": value}]}
    for old, new in rule.to_note.items():
        value = r.pop(old, None)
        if isinstance(value, str) and value:
            r.setdefault(new, []).append({"text": value})
    for step in rule.steps:
        STEPS[step](r, notes)
    for element, why in rule.drop.items():
        if element in r:
            del r[element]
            notes.append(f"{element} dropped: {why}")
    for element, value in rule.set.items():
        r.setdefault(element, copy.deepcopy(value))
    contained = r.get("contained")
    if isinstance(contained, list):
        kept = []
        for item in contained:
            sub = convert(item) if isinstance(item, dict) else Converted(None)
            if sub.resource is not None:
                kept.append(sub.resource)
        r["contained"] = kept
        if not kept:
            del r["contained"]
    return Converted(r, notes)
