"""HL7 v2 datatypes -> FHIR datatypes: the named converters mapping rules use.

Each converter takes one repetition of a field (or one component, for rules that
read e.g. SCH-11.4) as a list of *raw* components, the per-message
:class:`MapContext`, and the segment (for the few that read a sibling field,
like AIS-7 duration with AIS-8 units).  Components stay raw (escaped) until a
converter reads them, because only the converter knows whether a component is
a primitive (unescape it whole -- keeps an unescaped ``&`` in "A&E" as text) or
a composite whose sub-components must be split first (HD in CX-4, FN in XPN-1).

Converter names follow the V2-to-FHIR IG's datatype maps: ``CX[Identifier]``,
``XPN[HumanName]``, ``XCN[Practitioner]`` ...  :data:`CONVERTERS` maps each name
to a factory that checks its options once, when the YAML is loaded, and returns
a closure for the hot path.  A closure marked ``memo`` is pure (same text and
sender, same result), so its rule may reuse an earlier conversion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from gateway.hl7v2.parser import Encoding, Segment
from gateway.mapping.context import CodeMap, MapContext
from gateway.mapping.nhs_number import is_valid_nhs_number, normalize_nhs_number
from gateway.mapping.timestamps import (
    hl7_to_fhir_date,
    hl7_to_fhir_datetime,
    hl7_to_fhir_instant,
)

__all__ = [
    "CONVERTERS",
    "Converter",
    "Implied",
    "cwe_to_codeable_concept",
    "cx_to_identifier",
    "ei_to_identifier",
    "pl_to_location",
    "realize",
    "split_repetition",
    "texts",
    "xad_to_address",
    "xcn_to_practitioner",
    "xon_to_organization",
    "xpn_to_human_name",
    "xtn_to_contact_point",
]

Converter = Callable[[list[str], MapContext, Segment], Any]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


# -- reading components ---------------------------------------------------------------
def split_repetition(raw: str, enc: Encoding) -> list[str]:
    """One raw repetition as raw components (what converters receive)."""
    return raw.split(enc.component) if raw else []


def _text(raw: str, enc: Encoding) -> str:
    return enc.unescape(raw) if enc.escape and enc.escape in raw else raw


def texts(comps: list[str], n: int, enc: Encoding) -> list[str]:
    """Components 1..n as primitives, unescaped and stripped ('' when absent or HL7 null).

    One call per converter instead of one per component: this is the hot path."""
    esc = enc.escape
    out = [(raw if not (esc and esc in raw) else enc.unescape(raw)).strip() if raw and raw != '""' else ""
           for raw in comps[:n]]
    if len(out) < n:
        out.extend([""] * (n - len(out)))
    return out


def comp(comps: list[str], n: int, enc: Encoding) -> str:
    """Component n (1-based) of a primitive, unescaped and stripped; '' when absent or HL7 null."""
    if n > len(comps):
        return ""
    raw = comps[n - 1]
    if not raw or raw == '""':
        return ""
    return _text(raw, enc).strip()


def subs(comps: list[str], n: int, enc: Encoding) -> list[str]:
    """The sub-components of component n (1-based), unescaped; [] when absent."""
    if n > len(comps) or not comps[n - 1]:
        return []
    return [_text(s, enc).strip() for s in comps[n - 1].split(enc.subcomponent)]


def _sub(parts: list[str], n: int) -> str:
    return parts[n - 1] if n <= len(parts) else ""


def _first_sub(comps: list[str], n: int, enc: Encoding) -> str:
    """Sub-component 1 of component n: for a TS/HD/CWE nested inside another type."""
    if n > len(comps) or not comps[n - 1]:
        return ""
    raw = comps[n - 1].split(enc.subcomponent, 1)[0]
    return "" if raw == '""' else _text(raw, enc).strip()


# -- identifiers ----------------------------------------------------------------------
def _identifier(ctx: MapContext, value: str, namespace: str, universal: str, universal_type: str,
                type_code: str, kind: str, default_system: str | None) -> dict[str, Any]:
    """Build an Identifier, applying the system scheme and the NHS number check."""
    system, check = ctx.naming.resolve(namespace, universal, universal_type, type_code, kind, ctx.sender,
                                       default_system)
    if check == "nhs-number":
        checked = _checked_nhs_number(value)
        if checked is None:
            return _unverified_nhs_number(ctx, value, system)
        value = checked
    ident: dict[str, Any] = {"system": system, "value": value}
    if type_code:
        ident["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
    return ident


@lru_cache(maxsize=4096)
def _checked_nhs_number(value: str) -> str | None:
    """The ten digits of a valid NHS number, or None (cached: a child's number recurs in every message)."""
    normalized = normalize_nhs_number(value)
    return normalized if normalized is not None and is_valid_nhs_number(normalized) else None


def _unverified_nhs_number(ctx: MapContext, value: str, system: str) -> dict[str, Any]:
    """A claimed NHS number that fails Modulus 11: kept, but never in the NHS system."""
    rep = f" repetition {ctx.repetition}" if ctx.repetition else ""
    ctx.issue("W", 102, f"NHS number {value!r} in {ctx.location}{rep} failed its Modulus 11 check digit; "
                        f"kept as a local identifier of the sender, not as an NHS number")
    return {
        "system": ctx.naming.local_system(ctx.sender, "nhs-number-unverified"),
        "value": value,
        "type": {"text": "Unverified NHS number (failed Modulus 11 check)"},
    }


def cx_to_identifier(comps: list[str], ctx: MapContext, kind: str = "patient",
                     default_system: str | None = None) -> dict[str, Any] | None:
    """CX -> Identifier: CX-1 value, CX-4 assigning authority (HD), CX-5 type, CX-7/8 period."""
    enc = ctx.enc
    c = texts(comps, 5, enc)
    if not c[0]:
        return None
    hd = subs(comps, 4, enc)
    ident = _identifier(ctx, c[0], _sub(hd, 1), _sub(hd, 2), _sub(hd, 3), c[4], kind, default_system)
    if len(comps) < 7:
        return ident
    start, end = _first_sub(comps, 7, enc), _first_sub(comps, 8, enc)
    if start or end:
        period = _period(ctx, start, end, hl7_to_fhir_date)
        if period:
            ident["period"] = period
    return ident


def ei_to_identifier(parts: list[str], ctx: MapContext, kind: str, type_code: str = "") -> dict[str, Any] | None:
    """EI -> Identifier: EI-1 entity id, EI-2 namespace, EI-3 universal id, EI-4 its type.

    ``parts`` are the EI's components (or, for an EI inside another type, its
    already-unescaped sub-components)."""
    value, namespace, universal, universal_type = texts(parts, 4, ctx.enc)
    if not value:
        return None
    return _identifier(ctx, value, namespace, universal, universal_type, type_code, kind, None)


def _period(ctx: MapContext, start: str, end: str, convert: Callable[[str, str], str | None]) -> dict[str, str]:
    period: dict[str, str] = {}
    for key, raw in (("start", start), ("end", end)):
        if raw:
            try:
                value = convert(raw, ctx.tz)
            except ValueError as exc:
                ctx.issue("W", 102, f"{ctx.location}: {exc}; period {key} left out")
                continue
            if value:
                period[key] = value
    return period


# -- names, addresses, telecoms ---------------------------------------------------------
def _family(fn: list[str]) -> str:
    """FN: surname, own surname prefix ('van', 'de') -> 'van Berg'."""
    surname, prefix = _sub(fn, 1), _sub(fn, 2)
    return f"{prefix} {surname}" if prefix and surname else surname


def _human_name(ctx: MapContext, family: str, given: str, middle: str, suffix: str, prefix: str,
                degree: str, name_type: str) -> dict[str, Any] | None:
    name: dict[str, Any] = {}
    if name_type:
        use = ctx.codes["name-use"].target(name_type)
        if use:
            name["use"] = use
    if family:
        name["family"] = family
    givens = [g for g in (given, middle) if g]
    if givens:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    suffixes = [s for s in (suffix, degree) if s]
    if suffixes:
        name["suffix"] = suffixes
    return name if (family or givens) else None


def xpn_to_human_name(comps: list[str], ctx: MapContext) -> dict[str, Any] | None:
    """XPN -> HumanName: XPN-1 family (FN), -2 given, -3 further given, -4 suffix, -5 prefix,
    -6 degree, -7 name type (table 0200 -> use via codes/name-use.csv), -10/-12/-13 validity."""
    enc = ctx.enc
    _, given, middle, suffix, prefix, degree, name_type = texts(comps, 7, enc)
    name = _human_name(ctx, _family(subs(comps, 1, enc)), given, middle, suffix, prefix, degree, name_type)
    if name is None or len(comps) < 10:
        return name
    start, end = _first_sub(comps, 12, enc), _first_sub(comps, 13, enc)
    if not (start or end):
        dr = subs(comps, 10, enc)  # v2.5 name validity range (DR): start & end
        start, end = _sub(dr, 1), _sub(dr, 2)
    if start or end:
        period = _period(ctx, start, end, hl7_to_fhir_datetime)
        if period:
            name["period"] = period
    return name


def xpn_to_string(comps: list[str], ctx: MapContext) -> str | None:
    """XPN -> string (family name), for PID-6 mother's maiden name."""
    family = _family(subs(comps, 1, ctx.enc))
    return family or None


def xad_to_address(comps: list[str], ctx: MapContext) -> dict[str, Any] | None:
    """XAD -> Address: -1 street (SAD.1), -2 other designation, -3 city, -4 state, -5 postcode,
    -6 country, -7 address type (table 0190 via codes/address-use.csv), -9 county -> district."""
    enc = ctx.enc
    address: dict[str, Any] = {}
    _, other, city, state, postcode, country, address_type, _, county = texts(comps, 9, enc)
    street = subs(comps, 1, enc)
    lines = [line for line in (_sub(street, 1), other) if line]
    if lines:
        address["line"] = lines
    for key, value in (("city", city), ("district", county), ("state", state), ("postalCode", postcode),
                       ("country", country)):
        if value:
            address[key] = value
    if not address:
        return None
    if address_type:
        row = ctx.codes["address-use"].row(address_type)
        if row:
            if row.get("use"):
                address["use"] = row["use"]
            if row.get("type"):
                address["type"] = row["type"]
    if len(comps) < 12:
        return address
    start, end = _first_sub(comps, 13, enc), _first_sub(comps, 14, enc)
    if not (start or end):
        dr = subs(comps, 12, enc)
        start, end = _sub(dr, 1), _sub(dr, 2)
    if start or end:
        period = _period(ctx, start, end, hl7_to_fhir_datetime)
        if period:
            address["period"] = period
    return address


def _phone_number(c: list[str]) -> str:
    """The number from XTN components (already text): -12 unformatted, -1 formatted, else -5..-8."""
    if c[11]:
        return c[11]
    if c[0]:
        return c[0]
    country, area, local, ext = c[4], c[5], c[6], c[7]
    if not local:
        return ""
    number = " ".join(p for p in (f"+{country.lstrip('+')}" if country else "", area, local) if p)
    return f"{number} ext. {ext}" if ext else number


def xtn_to_contact_point(comps: list[str], ctx: MapContext, default_use: str | None = None) -> dict[str, Any] | None:
    """XTN -> ContactPoint: number from -12, -1 or -5/-6/-7/-8; e-mail from -4; -2 use
    (table 0201 via codes/telecom-use.csv); -3 equipment (table 0202 via
    codes/telecom-equipment.csv; CP -> a mobile phone)."""
    c = texts(comps, 12, ctx.enc)
    use_code, equipment, email = c[1], c[2], c[3]
    equipment_row = ctx.codes["telecom-equipment"].row(equipment) if equipment else None
    system = equipment_row.get("target") if equipment_row else None
    if system == "email" or (email and not system):
        value = email or c[0]
        system = "email"
    else:
        value = _phone_number(c)
        if not value and email:
            value, system = email, "email"
    if not value:
        return None
    if not system:
        system = "email" if "@" in value else "phone"
    point: dict[str, Any] = {"system": system, "value": value}
    use = ctx.codes["telecom-use"].target(use_code) if use_code else None
    if equipment_row and equipment_row.get("use"):
        use = equipment_row["use"]
    if not use and not use_code and default_use:
        use = default_use
    if use:
        point["use"] = use
    return point


# -- codes ------------------------------------------------------------------------------
def _coding(ctx: MapContext, code: str, display: str, system_name: str) -> dict[str, str]:
    coding: dict[str, str] = {}
    system = ctx.coding_system(system_name)
    if system:
        coding["system"] = system
    coding["code"] = code
    if display:
        coding["display"] = display
    return coding


def cwe_to_codeable_concept(comps: list[str], ctx: MapContext) -> dict[str, Any] | None:
    """CWE/CE/CNE -> CodeableConcept: -1/-2/-3 first coding, -4/-5/-6 alternate coding,
    -10/-11/-12 second alternate, -9 original text (else -2 when there is no code)."""
    c = texts(comps, 12, ctx.enc)
    codings = []
    for n in (0, 3, 9):
        if c[n]:
            codings.append(_coding(ctx, c[n], c[n + 1], c[n + 2]))
    text = c[8]
    if not codings and not text:
        text = c[1] or c[4]
    if not codings and not text:
        return None
    concept: dict[str, Any] = {}
    if codings:
        concept["coding"] = codings
    if text:
        concept["text"] = text
    return concept


def _unknown_code(ctx: MapContext, policy: str, code: str, codes: CodeMap) -> None:
    if policy == "ignore":
        return
    severity = "E" if policy == "error" else "W"
    consequence = "the message is rejected" if severity == "E" else "it was left out"
    ctx.issue(severity, 103, f"{ctx.location} value {code!r} is not in code map {codes.name!r}; {consequence} "
                             f"(add it to mappings/codes/{codes.name}.csv or a per-sender map in mappings/senders/)")


# -- implied resources ------------------------------------------------------------------
@dataclass(slots=True)
class Implied:
    """A resource a field implies (an XCN *is* a Practitioner), not yet registered.

    The ``*_resource`` builders below are pure -- same text, same sender, same
    result -- so the engine can memoise them; :func:`realize` then registers the
    intent for this message and returns the Reference that goes in the field's place.
    """

    resource_type: str
    resource: dict[str, Any]
    display: str
    key: str


def realize(ctx: MapContext, value: Any) -> Any:
    """An :class:`Implied` as a Reference to its (deduplicated) intent; anything else as is."""
    if value.__class__ is not Implied:
        return value
    ref = {"reference": ctx.add_intent(value.resource_type, value.resource, value.key)}
    if value.display:
        ref["display"] = value.display
    return ref


def xcn_to_practitioner(comps: list[str], ctx: MapContext, kind: str = "practitioner",
                        default_system: str | None = None) -> dict[str, str] | None:
    """XCN -> a Practitioner intent, returned as a Reference (see :func:`xcn_practitioner`)."""
    return realize(ctx, xcn_practitioner(comps, ctx, kind, default_system))


def xcn_practitioner(comps: list[str], ctx: MapContext, kind: str = "practitioner",
                     default_system: str | None = None) -> Implied | dict[str, str] | None:
    """XCN -> a Practitioner (identifier from -1 with -9 authority and -13 type; name from
    -2..-7, -10).  Without an id number the person cannot be matched, so no Practitioner
    is implied: the result is a Reference carrying only the display name."""
    enc = ctx.enc
    c = texts(comps, 13, enc)
    name = _human_name(ctx, _family(subs(comps, 2, enc)), c[2], c[3], c[4], c[5], c[6], c[9])
    display = _display_name(name)
    value = c[0]
    if not value:
        return {"display": display} if display else None
    hd = subs(comps, 9, enc)
    ident = _identifier(ctx, value, _sub(hd, 1), _sub(hd, 2), _sub(hd, 3), c[12], kind, default_system)
    resource: dict[str, Any] = {"resourceType": "Practitioner", "identifier": [ident]}
    if name:
        resource["name"] = [name]
    return Implied("Practitioner", resource, display, "practitioner")


def _display_name(name: dict[str, Any] | None) -> str:
    if not name:
        return ""
    parts = list(name.get("prefix", ())) + list(name.get("given", ())) + [name.get("family", "")]
    return " ".join(p for p in parts if p)


def xon_to_organization(comps: list[str], ctx: MapContext, kind: str = "organization",
                        default_system: str | None = None) -> dict[str, str] | None:
    """XON -> an Organization intent, returned as a Reference (see :func:`xon_organization`)."""
    return realize(ctx, xon_organization(comps, ctx, kind, default_system))


def xon_organization(comps: list[str], ctx: MapContext, kind: str = "organization",
                     default_system: str | None = None) -> Implied | dict[str, str] | None:
    """XON -> an Organization: name -1; id -10 (v2.5+) else -3; authority -6; type -7.
    For PD1-3 the rule's default system is the ODS code system."""
    enc = ctx.enc
    c = texts(comps, 10, enc)
    name = c[0]
    value = c[9] or c[2]
    if not value:
        return {"display": name} if name else None
    hd = subs(comps, 6, enc)
    ident = _identifier(ctx, value, _sub(hd, 1), _sub(hd, 2), _sub(hd, 3), c[6], kind, default_system)
    resource: dict[str, Any] = {"resourceType": "Organization", "identifier": [ident]}
    if name:
        resource["name"] = name
    return Implied("Organization", resource, name, "organization")


def pl_to_location(comps: list[str], ctx: MapContext) -> dict[str, str] | None:
    """PL -> a Location intent, returned as a Reference (see :func:`pl_location`)."""
    return realize(ctx, pl_location(comps, ctx))


def pl_location(comps: list[str], ctx: MapContext) -> Implied | None:
    """PL -> a Location.  Identifier: PL-10 (EI) when sent, else one built from the
    location's parts (building/floor/point of care/room/bed) in the namespace of the
    facility PL-4 (or the sender).  Name: PL-9 description, else the parts."""
    enc = ctx.enc
    point, room, bed, _, _, _, building, floor, description = texts(comps, 9, enc)
    facility = subs(comps, 4, enc)
    ident = ei_to_identifier(subs(comps, 10, enc), ctx, "location")
    if ident is None:
        parts = [p for p in (building, floor, point, room, bed) if p]
        if not parts:
            return None
        system = ctx.naming.system(_sub(facility, 1), _sub(facility, 2), _sub(facility, 3), "location",
                                   ctx.sender)
        ident = {"system": system, "value": "/".join(parts)}
    name = description or " ".join(p for p in (point, room, bed) if p) or ident["value"]
    resource: dict[str, Any] = {"resourceType": "Location", "identifier": [ident], "name": name, "mode": "instance"}
    if description and description != name:
        resource["description"] = description
    return Implied("Location", resource, name, "location")


def cwe_to_healthcare_service(comps: list[str], ctx: MapContext) -> dict[str, str] | None:
    """CWE (AIS-3) -> a HealthcareService intent, returned as a Reference."""
    return realize(ctx, cwe_healthcare_service(comps, ctx))


def cwe_healthcare_service(comps: list[str], ctx: MapContext) -> Implied | None:
    """CWE (AIS-3 service) -> a HealthcareService identified by the service code in the
    sender's namespace, so "every appointment at this clinic" is one search."""
    code, name = texts(comps, 2, ctx.enc)
    if not code:
        return None
    concept = cwe_to_codeable_concept(comps, ctx)
    resource: dict[str, Any] = {
        "resourceType": "HealthcareService",
        "identifier": [{"system": ctx.naming.local_system(ctx.sender, "healthcare-service"), "value": code}],
    }
    if name:
        resource["name"] = name
    if concept:
        resource["type"] = [concept]
    return Implied("HealthcareService", resource, name or code, "healthcare-service")


def cwe_to_logical_reference(comps: list[str], ctx: MapContext, kind: str = "resource") -> dict[str, Any] | None:
    """CWE (AIG-3 resource id) -> a logical Reference (identifier + display), no intent."""
    code, name = texts(comps, 2, ctx.enc)
    if not code and not name:
        return None
    ref: dict[str, Any] = {}
    if code:
        ref["identifier"] = {"system": ctx.naming.local_system(ctx.sender, kind), "value": code}
    if name or code:
        ref["display"] = name or code
    return ref


# -- durations ----------------------------------------------------------------------------
_TQ_DURATION = re.compile(r"([SMHDW])(\d+(?:\.\d+)?)")
_TQ_FACTORS = {"S": 1 / 60, "M": 1.0, "H": 60.0, "D": 1440.0, "W": 10080.0}


def _minutes(ctx: MapContext, amount: str, units: str) -> float | None:
    try:
        number = float(amount)
    except ValueError:
        raise ValueError(f"{amount!r} is not a number") from None
    if not units:
        return number  # the feeds we know send minutes when they leave the units out
    factor = ctx.codes["duration-units"].target(units)
    if factor is None:
        ctx.issue("W", 103, f"{ctx.location}: duration units {units!r} are not in code map 'duration-units'; "
                            "the duration was left out")
        return None
    return number * float(factor)


# -- factories: YAML rule options -> converter closures ------------------------------------
def _check_args(name: str, args: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(args) - allowed
    if unknown:
        raise ValueError(f"converter {name}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _simple(function: Callable[..., Any], allowed: set[str] = frozenset(), memo: bool = False
            ) -> Callable[..., Converter]:
    """A factory for a converter function whose options are keyword arguments.  ``memo``:
    the function is pure (same text and sender, same result), so the rule may memoise it."""
    def factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
        _check_args(name, args, set(allowed))
        options = dict(args)

        def convert(comps: list[str], ctx: MapContext, seg: Segment) -> Any:
            return function(comps, ctx, **options)
        convert.memo = memo  # type: ignore[attr-defined]
        return convert
    return factory


def _string_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    _check_args(name, args, set())

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> str | None:
        enc = ctx.enc
        raw = enc.component.join(comps)
        text = _text(raw, enc).strip() if raw != '""' else ""
        return text or None
    return convert


def _code_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    """``CWE[code]``/``ID[code]``: component 1, optionally through a code map.  A code the map
    does not know is never passed through (it could be an invalid FHIR code)."""
    _check_args(name, args, {"codes", "on_unknown"})
    code_map = _required_map(name, args, codes)
    on_unknown = _on_unknown(name, args)

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> str | None:
        code = comp(comps, 1, ctx.enc)
        if not code:
            return None
        if code_map is None:
            return code
        target = code_map.target(code)
        if target is None:
            _unknown_code(ctx, on_unknown, code, code_map)
        return target
    return convert


def _coding_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    """``ID[Coding]``: component 1 through a code map whose rows give target, system, display."""
    _check_args(name, args, {"codes", "on_unknown"})
    code_map = _required_map(name, args, codes)
    if code_map is None:
        raise ValueError(f"converter {name} needs a 'codes' map")
    on_unknown = _on_unknown(name, args)

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> dict[str, str] | None:
        code = comp(comps, 1, ctx.enc)
        if not code:
            return None
        row = code_map.row(code)
        if row is None:
            _unknown_code(ctx, on_unknown, code, code_map)
            return None
        coding = {"system": row["system"], "code": row["target"]}
        if row.get("display"):
            coding["display"] = row["display"]
        return coding
    return convert


def _cwe_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    """``CWE[CodeableConcept]``; with ``codes`` + ``system`` the mapped code is added as the first
    coding and the sender's original coding is kept after it."""
    _check_args(name, args, {"codes", "system", "display", "on_unknown"})
    code_map = _required_map(name, args, codes)
    system = args.get("system")
    if code_map is not None and not system:
        raise ValueError(f"converter {name}: 'codes' needs the 'system' of the mapped codes")
    on_unknown = _on_unknown(name, args, default="warn")

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> dict[str, Any] | None:
        concept = cwe_to_codeable_concept(comps, ctx)
        if concept is None or code_map is None:
            return concept
        code = comp(comps, 1, ctx.enc)
        row = code_map.row(code) if code else None
        if row is None:
            if code:
                _unknown_code(ctx, on_unknown, code, code_map)
            return concept
        mapped = {"system": system, "code": row["target"]}
        if row.get("display"):
            mapped["display"] = row["display"]
        concept["coding"] = [mapped] + concept.get("coding", [])
        return concept
    convert.memo = True  # type: ignore[attr-defined]
    return convert


def _required_map(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> CodeMap | None:
    map_name = args.get("codes")
    if map_name is None:
        return None
    if map_name not in codes:
        raise ValueError(f"converter {name}: no code map {map_name!r} in mappings/codes/")
    return codes[map_name]


def _on_unknown(name: str, args: dict[str, Any], default: str = "warn") -> str:
    policy = args.get("on_unknown", default)
    if policy not in ("error", "warn", "ignore"):
        raise ValueError(f"converter {name}: on_unknown must be error, warn or ignore")
    return policy


def _timestamp_factory(function: Callable[[str, str], str | None]) -> Callable[..., Converter]:
    def factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
        _check_args(name, args, set())

        def convert(comps: list[str], ctx: MapContext, seg: Segment) -> str | None:
            # TS (v2.3-v2.5) is time^degree-of-precision; DTM is one value.  Component 1 either way.
            value = _first_sub(comps, 1, ctx.enc) if comps else ""
            return function(value, ctx.tz) if value else None
        return convert
    return factory


def _boolean_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    _check_args(name, args, set())

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> bool | None:
        code = comp(comps, 1, ctx.enc)
        if not code:
            return None
        target = ctx.codes["yes-no"].target(code)
        if target is None:
            _unknown_code(ctx, "warn", code, ctx.codes["yes-no"])
            return None
        return target == "true"
    return convert


def _integer_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    _check_args(name, args, set())

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> int | None:
        text = comp(comps, 1, ctx.enc)
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    return convert


def _nm_minutes_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    """``NM[minutes]``: a duration whose units are in a sibling field (SCH-9 + SCH-10, AIS-7 + AIS-8)."""
    _check_args(name, args, {"units_field"})
    units_field = int(args["units_field"]) if "units_field" in args else None

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> float | None:
        amount = comp(comps, 1, ctx.enc)
        if not amount:
            return None
        units = seg.value(units_field, 1) if units_field else ""
        return _minutes(ctx, amount, units.strip())
    return convert


def _cq_minutes_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    """``CQ[minutes]``: quantity^units (TQ1-6 service duration)."""
    _check_args(name, args, set())

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> float | None:
        amount = comp(comps, 1, ctx.enc)
        return _minutes(ctx, amount, _first_sub(comps, 2, ctx.enc)) if amount else None
    return convert


def _tq_minutes_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    """``TQ3[minutes]``: the v2.3 TQ duration component, e.g. ``M30`` (30 minutes), ``H1``."""
    _check_args(name, args, set())

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> float | None:
        text = comp(comps, 1, ctx.enc).upper()
        if not text or text == "INDEF":
            return None
        m = _TQ_DURATION.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r} is not a TQ duration (S/M/H/D/W followed by a number)")
        return float(m.group(2)) * _TQ_FACTORS[m.group(1)]
    return convert


def _hd_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    """``HD[uri]``: an assigning authority / facility as the system URI the scheme gives it."""
    _check_args(name, args, {"kind"})
    kind = args.get("kind", "id")

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> str | None:
        namespace, universal, utype = texts(comps, 3, ctx.enc)
        if not (namespace or universal):
            return None
        return ctx.naming.system(namespace, universal, utype, kind, ctx.sender)
    return convert


def _ei_factory(name: str, args: dict[str, Any], codes: dict[str, CodeMap]) -> Converter:
    _check_args(name, args, {"kind", "type_code"})
    kind = args.get("kind", "id")
    type_code = args.get("type_code", "")

    def convert(comps: list[str], ctx: MapContext, seg: Segment) -> dict[str, Any] | None:
        return ei_to_identifier(comps, ctx, kind, type_code)
    return convert


CONVERTERS: dict[str, Callable[[str, dict[str, Any], dict[str, CodeMap]], Converter]] = {
    "ST[string]": _string_factory,
    "ID[code]": _code_factory,
    "CWE[code]": _code_factory,
    "ID[Coding]": _coding_factory,
    "ID[boolean]": _boolean_factory,
    "NM[integer]": _integer_factory,
    "NM[minutes]": _nm_minutes_factory,
    "CQ[minutes]": _cq_minutes_factory,
    "TQ3[minutes]": _tq_minutes_factory,
    "DTM[dateTime]": _timestamp_factory(hl7_to_fhir_datetime),
    "DTM[date]": _timestamp_factory(hl7_to_fhir_date),
    "DTM[instant]": _timestamp_factory(hl7_to_fhir_instant),
    "CX[Identifier]": _simple(cx_to_identifier, {"kind", "default_system"}),
    "EI[Identifier]": _ei_factory,
    "HD[uri]": _hd_factory,
    "XPN[HumanName]": _simple(xpn_to_human_name),
    "XPN[string]": _simple(xpn_to_string),
    "XAD[Address]": _simple(xad_to_address),
    "XTN[ContactPoint]": _simple(xtn_to_contact_point, {"default_use"}),
    "CWE[CodeableConcept]": _cwe_factory,
    "XCN[Practitioner]": _simple(xcn_practitioner, {"kind", "default_system"}, memo=True),
    "XON[Organization]": _simple(xon_organization, {"kind", "default_system"}, memo=True),
    "PL[Location]": _simple(pl_location, memo=True),
    "CWE[HealthcareService]": _simple(cwe_healthcare_service, memo=True),
    "CWE[Reference]": _simple(cwe_to_logical_reference, {"kind"}),
}
