"""The HL7 v2 -> FHIR R4 mapping engine: reads ``mappings/`` once, maps messages fast.

Why data and a compiler: every PAS speaks its own dialect, and the people who
know the dialect are integration engineers, not Python developers.  So *what*
maps to *what* lives in YAML/CSV (``docs/mapping.md`` documents the schema),
and this module turns it, at start-up, into plain closures and tuples -- one
closure per field rule -- so :meth:`MappingEngine.map` does no YAML, no lookups
by name and no regex on the hot path.

A message maps to :class:`~gateway.mapping.model.ResourceIntent` objects (no
database here).  Structural problems (unsupported type, missing SCH/PID, nothing
to identify the patient or appointment by) raise
:class:`~gateway.mapping.model.MappingError`; field-level problems are
:class:`~gateway.hl7v2.errors.Issue` objects on the result (severity E: the
message must be rejected with AE and nothing stored; W: AA with a warning).
"""

from __future__ import annotations

import csv
import fnmatch
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import yaml

from gateway.hl7v2.errors import Issue
from gateway.hl7v2.parser import DEFAULT_ENCODING, Message, Segment
from gateway.mapping.context import CodeMap, MapContext, Naming, TypePolicy, new_urn, slug
from gateway.mapping.datatypes import CONVERTERS
from gateway.mapping.model import MappingError, MappingResult, ResourceIntent
from gateway.mapping.timestamps import hl7_to_utc_instant, shift_fhir_instant

__all__ = ["MappingConfigError", "MappingEngine"]


class MappingConfigError(ValueError):
    """The mapping data is wrong (raised at load time, never while mapping a message)."""


# FHIR value sets the code maps must stay inside: a typo in a CSV must fail at start-up,
# not turn into an invalid resource at 3 a.m.
VALUE_SETS: dict[tuple[str, str], frozenset[str]] = {
    ("appointment-status", "target"): frozenset(
        "proposed pending booked arrived fulfilled cancelled noshow entered-in-error checked-in waitlist".split()),
    ("administrative-sex", "target"): frozenset("male female other unknown".split()),
    ("name-use", "target"): frozenset("usual official temp nickname anonymous old maiden".split()),
    ("address-use", "use"): frozenset("home work temp old billing".split()),
    ("address-use", "type"): frozenset("postal physical both".split()),
    ("telecom-use", "target"): frozenset("home work temp old mobile".split()),
    ("telecom-equipment", "target"): frozenset("phone fax email pager url sms other".split()),
    ("telecom-equipment", "use"): frozenset("home work temp old mobile".split()),
    ("cancellation-reason", "target"): frozenset(
        "pat pat-crs pat-cpp pat-dec pat-fam pat-mv pat-pre pat-swd pat-up prov prov-dch prov-edu prov-hosp "
        "prov-labs prov-mri prov-onc maint meds-inc other oth-cms oth-err oth-fin oth-im oth-int oth-mu "
        "oth-room oth-oerr oth-swie oth-weath".split()),
    ("yes-no", "target"): frozenset(("true", "false")),
}
ELEMENT_VALUE_SETS: dict[tuple[str, str], frozenset[str]] = {
    ("Appointment", "status"): VALUE_SETS[("appointment-status", "target")],
    ("Encounter", "status"): frozenset(
        "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown".split()),
}
# Code maps the datatype converters read by name; they must exist.
REQUIRED_CODE_MAPS = ("name-use", "address-use", "telecom-use", "telecom-equipment", "identifier-systems",
                      "coding-systems", "yes-no", "duration-units")

RULE_KEYS = {"field", "component", "type", "to", "repeat", "with", "overwrite", "join", "skip_if", "when",
             "on_error", "value", "ref", "note"}


# ======================================================================================
# Paths: "participant[+].actor" -> steps
# ======================================================================================
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\[[+=]\])?")


@dataclass(frozen=True, slots=True)
class ElementPath:
    """A compiled FHIR-Shorthand-style path.  ``x[+]`` appends a new element, ``x[=]`` is the
    element the last ``x[+]`` created while reading the same segment (the rule is skipped
    when there is none), a bare name is an object key or, last, the value's key."""

    text: str
    steps: tuple[tuple[str, str | None, str], ...]  # (key, mode, prefix key for [+]/[=])
    with_at: int  # index of the step whose element receives ``with`` constants (-1: the parent)

    @classmethod
    def parse(cls, text: str) -> ElementPath:
        steps = []
        prefix = ""
        for part in text.split("."):
            m = _STEP.fullmatch(part)
            if m is None:
                raise MappingConfigError(f"bad path {text!r} at {part!r}")
            key, mode = m.group(1), (m.group(2) or "")[1:2] or None
            prefix = f"{prefix}.{key}" if prefix else key
            steps.append((key, mode, prefix))
        if steps[-1][1] == "=":
            raise MappingConfigError(f"path {text!r} cannot end in [=]")
        with_at = max((i for i, s in enumerate(steps) if s[1] == "+"), default=-1)
        return cls(text, tuple(steps), with_at)


class Builder:
    """One resource under construction plus the ``[+]`` elements of the segment being read."""

    __slots__ = ("resource", "current", "origins")

    def __init__(self, resource_type: str) -> None:
        self.resource: dict[str, Any] = {"resourceType": resource_type}
        self.current: dict[str, Any] = {}
        self.origins: dict[str, tuple] = {}


def _clone(value: Any) -> Any:
    """Copy a YAML constant so no two resources share a mutable object."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _set_missing(holder: dict[str, Any], constants: dict[str, Any]) -> None:
    for key, value in constants.items():
        if key not in holder:
            holder[key] = _clone(value)


def _has(resource: dict[str, Any], dotted: str) -> bool:
    obj: Any = resource
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return False
        obj = obj[key]
    return obj not in (None, "", [], {})


Put = Callable[[Builder, Any], bool]


def _make_put(path: ElementPath, with_: dict[str, Any] | None, overwrite: Any, join: str | None) -> Put:
    """Compile a path + options into ``put(builder, value) -> written?``."""
    steps = path.steps
    inner, (last_key, last_mode, last_prefix) = steps[:-1], steps[-1]
    with_at = path.with_at
    last_index = len(steps) - 1
    never = overwrite == "never"
    allowed = frozenset(overwrite) if isinstance(overwrite, list) else None

    def put(b: Builder, value: Any) -> bool:
        obj = b.resource
        for i, (key, mode, prefix) in enumerate(inner):
            if mode is None:
                nxt = obj.get(key)
                if nxt is None:
                    nxt = obj[key] = {}
                obj = nxt
            elif mode == "+":
                nxt = {k: _clone(v) for k, v in with_.items()} if (with_ and i == with_at) else {}
                obj.setdefault(key, []).append(nxt)
                b.current[prefix] = nxt
                obj = nxt
            else:  # "="
                nxt = b.current.get(prefix)
                if nxt is None:
                    return False
                obj = nxt
        if last_mode == "+":
            obj.setdefault(last_key, []).append(value)
            if isinstance(value, dict):
                b.current[last_prefix] = value
                if with_ and with_at == last_index:
                    _set_missing(value, with_)
        else:
            existing = obj.get(last_key)
            if existing is not None and existing != "":
                if join is not None and isinstance(existing, str):
                    value = f"{existing}{join}{value}"
                elif never or (allowed is not None and value not in allowed):
                    return False
            obj[last_key] = value
            if with_ and with_at < 0:
                _set_missing(obj, with_)
        return True

    return put


# ======================================================================================
# Rules
# ======================================================================================
Rule = Callable[[Segment | None, Builder, MapContext], None]


@dataclass(frozen=True, slots=True)
class Condition:
    """``when: {path: status, in: [cancelled]}`` -- checked after the event policy ran."""

    path: str
    values: frozenset[str]

    def holds(self, resource: dict[str, Any]) -> bool:
        obj: Any = resource
        for key in self.path.split("."):
            obj = obj.get(key) if isinstance(obj, dict) else None
        return obj in self.values


@dataclass(slots=True)
class CompiledRule:
    apply: Rule
    when: Condition | None
    text: str  # for error messages and docs


def _compile_rule(spec: dict[str, Any], codes: dict[str, CodeMap], segment: str, where: str,
                  resource_keys: set[str] | None = None) -> CompiledRule:
    if not isinstance(spec, dict) or "to" not in spec:
        raise MappingConfigError(f"{where}: a rule needs 'to' (got {spec!r})")
    path = ElementPath.parse(spec["to"])
    with_ = spec.get("with")
    if with_ is not None and not isinstance(with_, dict):
        raise MappingConfigError(f"{where}: 'with' must be a mapping")
    overwrite = spec.get("overwrite", "always")
    if not (overwrite in ("always", "never") or isinstance(overwrite, list)):
        raise MappingConfigError(f"{where}: overwrite must be always, never or a list of values")
    put = _make_put(path, with_, overwrite, spec.get("join"))
    when = None
    if "when" in spec:
        w = spec["when"]
        if not isinstance(w, dict) or "path" not in w or "in" not in w:
            raise MappingConfigError(f"{where}: when needs 'path' and 'in'")
        when = Condition(w["path"], frozenset(w["in"]))
    skip_if = spec.get("skip_if")

    if "value" in spec:
        return CompiledRule(_const_rule(put, spec["value"], skip_if), when, f"{spec['to']} = {spec['value']!r}")
    if "ref" in spec:
        if resource_keys is not None and spec["ref"] not in resource_keys:
            raise MappingConfigError(f"{where}: ref {spec['ref']!r} names no earlier resource")
        return CompiledRule(_ref_rule(put, spec["ref"], skip_if), when, f"{spec['to']} -> {spec['ref']}")
    return CompiledRule(_field_rule(spec, codes, segment, where, put, skip_if), when,
                        f"{segment}-{spec.get('field')} -> {spec['to']}")


def _const_rule(put: Put, value: Any, skip_if: str | None) -> Rule:
    def apply(seg: Segment | None, b: Builder, ctx: MapContext) -> None:
        if skip_if and _has(b.resource, skip_if):
            return
        put(b, _clone(value))
    return apply


def _ref_rule(put: Put, key: str, skip_if: str | None) -> Rule:
    def apply(seg: Segment | None, b: Builder, ctx: MapContext) -> None:
        if skip_if and _has(b.resource, skip_if):
            return
        url = ctx.keyed.get(key)
        if url:
            put(b, {"reference": url})
    return apply


def _field_rule(spec: dict[str, Any], codes: dict[str, CodeMap], segment: str, where: str, put: Put,
                skip_if: str | None) -> Rule:
    unknown = set(spec) - RULE_KEYS
    type_name = spec.get("type")
    if "field" not in spec or type_name is None:
        raise MappingConfigError(f"{where}: a field rule needs 'field' and 'type'")
    factory = CONVERTERS.get(type_name)
    if factory is None:
        raise MappingConfigError(f"{where}: unknown type {type_name!r}; known: {sorted(CONVERTERS)}")
    try:
        convert = factory(type_name, {k: spec[k] for k in unknown}, codes)
    except (ValueError, KeyError) as exc:
        raise MappingConfigError(f"{where}: {exc}") from None
    field_no = int(spec["field"])
    component = int(spec["component"]) if spec.get("component") else None
    repeat = spec.get("repeat", "all" if spec["to"].endswith("[+]") else "first")
    if repeat not in ("all", "first"):
        raise MappingConfigError(f"{where}: repeat must be all or first")
    repeat_all = repeat == "all"
    on_error = spec.get("on_error", "error")
    if on_error not in ("error", "warn"):
        raise MappingConfigError(f"{where}: on_error must be error or warn")
    severity = "E" if on_error == "error" else "W"
    target = spec["to"]
    scratch = target.startswith("_")

    def apply(seg: Segment | None, b: Builder, ctx: MapContext) -> None:
        fields = seg.fields  # type: ignore[union-attr]
        raw = fields[field_no] if field_no < len(fields) else ""
        if not raw or raw == '""':
            return
        if skip_if and _has(b.resource, skip_if):
            return
        enc = ctx.enc
        if enc.repetition in raw:
            reps = raw.split(enc.repetition) if repeat_all else [raw.split(enc.repetition, 1)[0]]
        else:
            reps = (raw,)
        ctx.segment, ctx.field, ctx.component = segment, field_no, component
        for i, rep in enumerate(reps):
            if not rep or rep == '""':
                continue
            comps = rep.split(enc.component)
            if component:
                if component > len(comps) or not comps[component - 1]:
                    continue
                comps = comps[component - 1].split(enc.subcomponent)
            ctx.repetition = i + 1
            try:
                value = convert(comps, ctx, seg)  # type: ignore[arg-type]
            except ValueError as exc:
                consequence = "the message is rejected" if severity == "E" else "the value was left out"
                ctx.issue(severity, 102, f"{ctx.location} is not valid: {exc}; {consequence}")
                continue
            if value is None:
                continue
            if put(b, value) and scratch:
                b.origins[target] = (segment, ctx.sequence, field_no, component)

    return apply


# ======================================================================================
# Compiled messages
# ======================================================================================
@dataclass(frozen=True, slots=True)
class ElementPolicy:
    """What an event does to one element: fill a default, allow only some values, or force one."""

    default: Any = None
    allow: frozenset[str] | None = None
    force: Any = None

    def apply(self, resource: dict[str, Any], element: str) -> None:
        if self.force is not None:
            resource[element] = _clone(self.force)
            return
        current = resource.get(element)
        if current is not None and self.allow is not None and current not in self.allow:
            current = None
        if current is None and self.default is not None:
            resource[element] = _clone(self.default)
        elif current is None:
            resource.pop(element, None)


@dataclass(slots=True)
class CompiledResource:
    key: str
    resource_type: str
    anchor: str
    plan: list[tuple[str, list[CompiledRule]]]
    assign: list[CompiledRule]
    defaults: dict[str, ElementPolicy]
    finalize: list[str]
    unidentified: dict[str, Any] | str | None
    action: str = "upsert"
    merge_target: str | None = None
    events: frozenset[str] | None = None
    on_repeat: str = "warn"


@dataclass(slots=True)
class CompiledMessage:
    message: str
    required: list[str]
    resources: list[CompiledResource]
    events: dict[str, dict[str, dict[str, Any]]]  # event -> key -> {"policies": {...}, "action": str}


@dataclass(slots=True)
class Profile:
    """Everything compiled for one sender (or the default): code maps, naming, messages."""

    name: str
    codes: dict[str, CodeMap]
    naming: Naming
    messages: dict[str, CompiledMessage]  # "SIU^S12" -> spec
    namespace: str | None = None


# ======================================================================================
# Finalizers: cross-field logic that is code, named from the YAML
# ======================================================================================
def _origin_at(ctx: MapContext, b: Builder, key: str, fallback: tuple) -> None:
    origin = b.origins.get(key) or fallback
    segment, sequence, field_no, component = (tuple(origin) + (None, None, None, None))[:4]
    ctx.at(segment or fallback[0], sequence or 1, field_no, None, component)


def _appointment_timing(b: Builder, ctx: MapContext) -> None:
    """start/end/minutesDuration from the scratch values the rules collected.

    ``_start``/``_end`` are dateTimes from TQ1-7/8, else SCH-11.4/11.5, else AIS-4;
    ``_minutes`` a duration from TQ1-6, SCH-11.3, SCH-9/10 or AIS-7/8.  An instant
    needs a time: a date-only start is kept in ``requestedPeriod`` with a warning.
    """
    r = b.resource
    start, end, minutes = r.pop("_start", None), r.pop("_end", None), r.pop("_minutes", None)
    fallback = ("SCH", 1, 11, None)
    date_only = bool(start) and "T" not in start
    if date_only:
        _origin_at(ctx, b, "_start", fallback)
        ctx.issue("W", 102, f"{ctx.location} start {start!r} has no time of day; Appointment.start needs one, "
                            "so the date is kept in Appointment.requestedPeriod")
        period = {"start": start}
        if end:
            period["end"] = end
        r["requestedPeriod"] = [period]
        start = end = None
    if end and "T" not in end:
        _origin_at(ctx, b, "_end", fallback)
        ctx.issue("W", 102, f"{ctx.location} end {end!r} has no time of day; Appointment.end left out")
        end = None
    if start:
        r["start"] = start
        if end:
            if datetime.fromisoformat(end) < datetime.fromisoformat(start):
                _origin_at(ctx, b, "_end", fallback)
                ctx.issue("W", 102, f"{ctx.location} end {end!r} is before the start {start!r}; end left out")
            else:
                r["end"] = end
        if "end" not in r and minutes:
            r["end"] = shift_fhir_instant(start, minutes)
        if not minutes and "end" in r:
            delta = datetime.fromisoformat(r["end"]) - datetime.fromisoformat(start)
            minutes = delta.total_seconds() / 60
    elif end:
        _origin_at(ctx, b, "_end", fallback)
        ctx.issue("W", 102, f"{ctx.location} end {end!r} has no start; Appointment.end left out")
    if minutes and round(minutes) >= 1:
        r["minutesDuration"] = int(round(minutes))
    status = r.get("status")
    if date_only or status in ("proposed", "cancelled", "waitlist", "entered-in-error"):
        return
    if "start" not in r or "end" not in r:
        _origin_at(ctx, b, "_start", fallback)
        missing = "an end time or duration" if "start" in r else "a start time"
        ctx.issue("W", 101, f"the appointment has {missing} (TQ1-7/TQ1-8, SCH-11.4/.5, AIS-4, SCH-9 or "
                            f"AIS-7); FHIR expects both start and end for a {status} appointment")


FINALIZERS: dict[str, Callable[[Builder, MapContext], None]] = {
    "appointment-timing": _appointment_timing,
}


# ======================================================================================
# Loading
# ======================================================================================
def _read_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _load_csv(path: Path) -> CodeMap:
    """A code map CSV: first column ``source``, other columns free (``target`` usual).
    Rows whose source starts with ``#`` are comments."""
    rows: dict[str, dict[str, str]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or reader.fieldnames[0] != "source":
            raise MappingConfigError(f"{path}: the first column must be 'source'")
        for row in reader:
            source = (row.pop("source") or "").strip()
            if not source or source.startswith("#"):
                continue
            key = source.upper()
            if key in rows:
                raise MappingConfigError(f"{path}: source {source!r} appears twice")
            rows[key] = {k: (v or "").strip() for k, v in row.items() if k}
    return CodeMap(path.stem, rows)


def _check_code_map(code_map: CodeMap, where: str) -> None:
    for (name, column), allowed in VALUE_SETS.items():
        if name != code_map.name:
            continue
        for source, row in code_map.rows.items():
            value = row.get(column, "")
            if value and value not in allowed:
                raise MappingConfigError(f"{where}: {name} maps {source!r} to {value!r}, which is not a valid "
                                         f"FHIR code for {column} ({sorted(allowed)})")
    if code_map.name == "duration-units":
        for source, row in code_map.rows.items():
            try:
                float(row.get("target", ""))
            except ValueError:
                raise MappingConfigError(f"{where}: duration-units {source!r} needs a number of minutes") from None


def _compile_selectors(items: list[str], where: str) -> tuple[tuple[str, Any], ...]:
    out = []
    for item in items:
        if item == "*":
            out.append(("*", None))
            continue
        how, _, what = str(item).partition(":")
        if how == "system":
            out.append(("system", re.compile(fnmatch.translate(what))))
        elif how == "type":
            out.append(("type", what))
        else:
            raise MappingConfigError(f"{where}: match selector {item!r} must be '*', system:<glob> or type:<code>")
    return tuple(out)


def _element_policies(resource_type: str, spec: dict[str, Any], where: str) -> dict[str, ElementPolicy]:
    policies = {}
    for element, policy in (spec or {}).items():
        if not isinstance(policy, dict) or not set(policy) <= {"default", "allow", "force"}:
            raise MappingConfigError(f"{where}: {element} needs default/allow/force")
        valid = ELEMENT_VALUE_SETS.get((resource_type, element))
        if valid is not None:
            for v in [policy.get("default"), policy.get("force"), *(policy.get("allow") or [])]:
                if v is not None and v not in valid:
                    raise MappingConfigError(f"{where}: {v!r} is not a valid {resource_type}.{element}")
        allow = policy.get("allow")
        policies[element] = ElementPolicy(policy.get("default"), frozenset(allow) if allow else None,
                                          policy.get("force"))
    return policies


class MappingEngine:
    """Loads and compiles ``mappings/`` once; :meth:`map` turns a parsed message into intents.

    ``mappings_dir`` layout: ``resources.yaml`` (systems, match and merge policy per
    resource type), ``messages/*.yaml``, ``segments/*.yaml``, ``codes/*.csv``,
    ``senders/*.yaml`` (per-sender overrides).  See docs/mapping.md.
    """

    def __init__(self, mappings_dir: Path | str, default_timezone: str = "Europe/London") -> None:
        self.mappings_dir = Path(mappings_dir)
        self.default_timezone = default_timezone
        root = self.mappings_dir
        resources = _read_yaml(root / "resources.yaml") or {}
        self._order = {t: i for i, t in enumerate(resources.get("order", []))}
        self._identifier_base = resources.get("identifier_base", "https://fhir.gateway.example/id")
        self._codesystem_base = resources.get("codesystem_base", "https://fhir.gateway.example/CodeSystem")
        self._policies = self._load_policies(resources.get("types", {}))
        base_codes = self._load_codes(root / "codes")
        self._segment_specs = self._load_segments(root / "segments")
        self._message_specs = [(p, _read_yaml(p)) for p in sorted((root / "messages").glob("*.yaml"))]
        self._default = self._compile_profile("default", base_codes, {}, None)
        self._senders: dict[tuple[str, str], Profile] = {}
        for path in sorted((root / "senders").glob("*.yaml")) if (root / "senders").is_dir() else []:
            self._load_sender(path, base_codes)

    # -- loading -------------------------------------------------------------------------------
    def _load_policies(self, types: dict[str, Any]) -> dict[str, TypePolicy]:
        policies = {}
        for resource_type, spec in types.items():
            where = f"resources.yaml {resource_type}"
            policies[resource_type] = TypePolicy(
                resource_type,
                _compile_selectors(spec.get("match", ["*"]), where),
                _compile_selectors(spec.get("never_match", []), where),
                dict(spec.get("merge", {})),
            )
            for element, how in policies[resource_type].merge.items():
                if how not in ("union", "replace"):
                    raise MappingConfigError(f"{where}: merge of {element} must be union or replace")
        return policies

    def _load_codes(self, folder: Path) -> dict[str, CodeMap]:
        codes = {}
        for path in sorted(folder.glob("*.csv")):
            code_map = _load_csv(path)
            _check_code_map(code_map, str(path))
            codes[code_map.name] = code_map
        missing = [name for name in REQUIRED_CODE_MAPS if name not in codes]
        if missing:
            raise MappingConfigError(f"{folder}: missing code maps {missing}")
        return codes

    def _load_segments(self, folder: Path) -> dict[str, tuple[str, list[dict[str, Any]]]]:
        specs: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        for path in sorted(folder.glob("*.yaml")):
            doc = _read_yaml(path) or {}
            maps = doc.get("maps") if isinstance(doc, dict) and "maps" in doc else [doc]
            for m in maps:
                key = f"{m['segment'].upper()}[{m['resource']}]"
                if key in specs:
                    raise MappingConfigError(f"{path}: {key} is mapped twice")
                specs[key] = (f"{path.name} {key}", list(m.get("fields") or []))
        return specs

    def _load_sender(self, path: Path, base_codes: dict[str, CodeMap]) -> None:
        doc = _read_yaml(path) or {}
        where = path.name
        sender = doc.get("sender") or {}
        codes = dict(base_codes)
        for name, overrides in (doc.get("codes") or {}).items():
            if name not in codes:
                raise MappingConfigError(f"{where}: no code map {name!r} to override")
            rows = {str(k): ({"target": str(v)} if not isinstance(v, dict) else {a: str(b) for a, b in v.items()})
                    for k, v in (overrides or {}).items()}
            codes[name] = codes[name].with_overrides(rows)
            _check_code_map(codes[name], where)
        profile = self._compile_profile(sender.get("name", path.stem), codes, doc, where)
        profile.namespace = slug(sender["namespace"]) if sender.get("namespace") else None
        matches = sender.get("match") or []
        if not matches:
            raise MappingConfigError(f"{where}: sender.match must list at least one application/facility")
        for m in matches:
            app = str(m.get("application", "*")).upper()
            fac = str(m.get("facility", "*")).upper()
            if (app, fac) == ("*", "*"):
                raise MappingConfigError(f"{where}: a match needs an application or a facility")
            if (app, fac) in self._senders:
                raise MappingConfigError(f"{where}: sender {app}/{fac} is already claimed by another file")
            self._senders[(app, fac)] = profile

    def _compile_profile(self, name: str, codes: dict[str, CodeMap], sender_doc: dict[str, Any],
                         where: str | None) -> Profile:
        naming = Naming(self._identifier_base, self._codesystem_base, codes["identifier-systems"],
                        codes["coding-systems"])
        segment_specs = dict(self._segment_specs)
        extra_segments: dict[str, list[str]] = {}
        for extra in sender_doc.get("segments") or []:
            seg_key = f"{extra['segment'].upper()}[{extra['resource']}]"
            label, base_fields = segment_specs.get(seg_key, ("", []))
            segment_specs[seg_key] = (f"{where} {seg_key}", base_fields + list(extra.get("fields") or []))
            if extra.get("into"):
                extra_segments.setdefault(extra["into"], []).append(extra["segment"].upper())
        messages: dict[str, CompiledMessage] = {}
        for path, doc in self._message_specs:
            compiled = self._compile_message(doc, path.name, codes, segment_specs, extra_segments)
            for event in compiled.events:
                messages[f"{compiled.message}^{event}"] = compiled
        return Profile(name, codes, naming, messages)

    def _compile_message(self, doc: dict[str, Any], where: str, codes: dict[str, CodeMap],
                         segment_specs: dict[str, tuple[str, list[dict[str, Any]]]],
                         extra_segments: dict[str, list[str]]) -> CompiledMessage:
        resources: list[CompiledResource] = []
        keys: set[str] = set()
        types_by_key: dict[str, str] = {}
        for rspec in doc.get("resources") or []:
            key, rtype = rspec["key"], rspec["type"]
            rwhere = f"{where} resource {key}"
            segments = [s.upper() for s in rspec["segments"]] + extra_segments.get(key, [])
            plan = []
            for seg_name in segments:
                spec = segment_specs.get(f"{seg_name}[{rtype}]")
                if spec is None:
                    raise MappingConfigError(f"{rwhere}: no segment map {seg_name}[{rtype}] in mappings/segments/")
                label, fields = spec
                rules = [_compile_rule(r, codes, seg_name, f"{label} rule {i + 1}") for i, r in enumerate(fields)]
                plan.append((seg_name, rules))
            assign = [_compile_rule(r, codes, "", f"{rwhere} assign {i + 1}", keys)
                      for i, r in enumerate(rspec.get("assign") or [])]
            for fin in rspec.get("finalize") or []:
                if fin not in FINALIZERS:
                    raise MappingConfigError(f"{rwhere}: unknown finalizer {fin!r}; known: {sorted(FINALIZERS)}")
            target = rspec.get("merge_target")
            if target is not None and target not in keys:
                raise MappingConfigError(f"{rwhere}: merge_target {target!r} names no earlier resource")
            resources.append(CompiledResource(
                key=key, resource_type=rtype, anchor=segments[0], plan=plan, assign=assign,
                defaults=_element_policies(rtype, rspec.get("defaults"), rwhere),
                finalize=list(rspec.get("finalize") or []), unidentified=rspec.get("unidentified"),
                action=rspec.get("action", "upsert"), merge_target=target,
                events=frozenset(rspec["events"]) if rspec.get("events") else None,
                on_repeat=rspec.get("on_repeat", "warn"),
            ))
            keys.add(key)
            types_by_key[key] = rtype
        events: dict[str, dict[str, dict[str, Any]]] = {}
        for event, per_key in (doc.get("events") or {}).items():
            compiled_event: dict[str, dict[str, Any]] = {}
            for key, spec in (per_key or {}).items():
                if key not in keys:
                    raise MappingConfigError(f"{where} event {event}: no resource {key!r}")
                spec = dict(spec or {})
                action = spec.pop("action", None)
                if action not in (None, "upsert", "delete", "merge-into"):
                    raise MappingConfigError(f"{where} event {event}: unknown action {action!r}")
                compiled_event[key] = {"action": action,
                                       "policies": _element_policies(types_by_key[key], spec, f"{where} {event}")}
            events[str(event).upper()] = compiled_event
        return CompiledMessage(doc["message"].upper(), [s.upper() for s in doc.get("required_segments", [])],
                               resources, events)

    # -- mapping ---------------------------------------------------------------------------------
    def profile_for(self, msg: Message) -> Profile:
        """The sender profile for MSH-3/MSH-4 (application+facility, then either alone)."""
        if not self._senders:
            return self._default
        msh = msg.msh
        app, fac = msh.value(3, 1).strip().upper(), msh.value(4, 1).strip().upper()
        senders = self._senders
        return senders.get((app, fac)) or senders.get((app, "*")) or senders.get(("*", fac)) or self._default

    def new_context(self, msg: Message | None = None, profile: Profile | None = None) -> MapContext:
        """A mapping context for ``msg`` (or a blank one, for calling converters directly)."""
        profile = profile or (self.profile_for(msg) if msg is not None else self._default)
        sender = profile.namespace
        if sender is None:
            sender = "unknown"
            if msg is not None:
                sender = slug(msg.msh.value(4, 1) or msg.msh.value(3, 1) or "unknown")
        return MapContext(enc=msg.enc if msg is not None else DEFAULT_ENCODING,
                          tz=self.default_timezone, codes=profile.codes, naming=profile.naming,
                          policies=self._policies, sender=sender)

    def map(self, msg: Message) -> MappingResult:
        """Map one parsed message.  Raises MappingError when it cannot be mapped at all."""
        code, event = msg.message_code.strip(), msg.trigger_event.strip()
        message_type = f"{code}^{event}"
        profile = self.profile_for(msg)
        spec = profile.messages.get(message_type)
        if spec is None:
            raise MappingError([Issue("E", 200, f"message type {message_type!r} (MSH-9) is not supported; "
                                                f"supported: {', '.join(sorted(profile.messages))}",
                                      "MSH", 1, 9)])
        ctx = self.new_context(msg, profile)
        ctx.guard_time = self._guard_time(msg, ctx)
        missing = [s for s in spec.required if msg.find(s) is None]
        if missing:
            raise MappingError(ctx.issues + [
                Issue("E", 100, f"{message_type} needs a {s} segment and has none", s, 1) for s in missing])
        by_key: dict[str, ResourceIntent] = {}
        event_spec = spec.events.get(event, {})
        for rspec in spec.resources:
            intent = self._map_resource(msg, ctx, rspec, event, event_spec.get(rspec.key), by_key)
            if intent is not None:
                by_key[rspec.key] = intent
                ctx.keyed[rspec.key] = intent.full_url
                ctx.intents.append(intent)
        order = self._order
        intents = sorted(ctx.intents, key=lambda i: order.get(i.resource_type, len(order)))
        return MappingResult(message_type, intents, ctx.issues)

    def _guard_time(self, msg: Message, ctx: MapContext) -> str | None:
        raw = msg.msh.value(7, 1)
        ctx.at("MSH", 1, 7)
        if not raw:
            ctx.issue("W", 101, "MSH-7 (date/time of message) is empty; older messages cannot be told from newer")
            return None
        try:
            return hl7_to_utc_instant(raw.strip(), self.default_timezone)
        except ValueError as exc:
            ctx.issue("W", 102, f"MSH-7 is not a valid timestamp: {exc}")
            return None

    def _map_resource(self, msg: Message, ctx: MapContext, rspec: CompiledResource, event: str,
                      event_spec: dict[str, Any] | None, by_key: dict[str, ResourceIntent]) -> ResourceIntent | None:
        if rspec.events is not None and event not in rspec.events:
            return None
        anchors = msg.find_all(rspec.anchor)
        if not anchors:
            return None
        if len(anchors) > 1:
            ctx.at(rspec.anchor, 2)
            severity = "E" if rspec.on_repeat == "error" else "W"
            ctx.issue(severity, 100 if severity == "E" else 0,
                      f"{len(anchors)} {rspec.anchor} segments; only the first is mapped to {rspec.resource_type}")
        b = Builder(rspec.resource_type)
        ctx.segment, ctx.sequence = "", 1
        for rule in rspec.assign:  # first, so e.g. the patient is the first participant
            b.current.clear()
            rule.apply(None, b, ctx)
        deferred: list[tuple[CompiledRule, Segment, int]] = []
        for seg_name, rules in rspec.plan:
            segments = anchors[:1] if seg_name == rspec.anchor else msg.find_all(seg_name)
            for sequence, seg in enumerate(segments, 1):
                ctx.sequence = sequence
                b.current.clear()
                for rule in rules:
                    if rule.when is None:
                        rule.apply(seg, b, ctx)
                    else:
                        deferred.append((rule, seg, sequence))
        resource = b.resource
        for element, policy in rspec.defaults.items():
            policy.apply(resource, element)
        action = rspec.action
        if event_spec:
            for element, policy in event_spec["policies"].items():
                policy.apply(resource, element)
            action = event_spec["action"] or action
        for rule, seg, sequence in deferred:
            if rule.when.holds(resource):  # type: ignore[union-attr]
                ctx.sequence = sequence
                b.current.clear()
                rule.apply(seg, b, ctx)
        for name in rspec.finalize:
            FINALIZERS[name](b, ctx)
        for key in [k for k in resource if k.startswith("_")]:
            del resource[key]
        policy = self._policies.get(rspec.resource_type)
        matches = policy.matches(resource.get("identifier") or []) if policy else []
        if not matches and not self._unidentified(ctx, rspec, msg):
            return None
        target = by_key.get(rspec.merge_target) if rspec.merge_target else None
        return ResourceIntent(
            full_url=new_urn(), resource_type=rspec.resource_type, resource=resource, matches=matches, action=action,  # type: ignore[arg-type]
            merge=dict(policy.merge) if policy else {}, guard_time=ctx.guard_time,
            merge_target=target.full_url if target else None, key=rspec.key,
        )

    def _unidentified(self, ctx: MapContext, rspec: CompiledResource, msg: Message) -> bool:
        """No identifier to match on: raise, skip the resource, or keep it (create every time)."""
        how = rspec.unidentified
        if how == "skip":
            return False
        if how is None or how == "create":
            return True
        raise MappingError(ctx.issues + [Issue(how.get("severity", "E"), int(how.get("code", 101)), how["text"],
                                               how.get("segment", rspec.anchor), 1, how.get("field"))])
