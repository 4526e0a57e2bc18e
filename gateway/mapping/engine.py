"""The HL7 v2 -> FHIR R4 mapping engine: reads ``mappings/`` once, maps messages fast.

Why data and a compiler: every PAS speaks its own dialect, and the people who
know the dialect are integration engineers, not Python developers.  So *what*
maps to *what* lives in YAML/CSV (``docs/mapping.md`` documents the schema),
and this module loads it once, at start-up, compiling each rule into a closure
(:mod:`gateway.mapping.rules`) and each message type into a plan of tuples, so
:meth:`MappingEngine.map` does no YAML and no lookups by name on the hot path.
Per-sender files (``mappings/senders``) compile into their own profile.

A message maps to :class:`~gateway.mapping.model.ResourceIntent` objects (no
database here).  Structural problems (unsupported type, missing SCH/PID, nothing
to identify the patient or appointment by) raise
:class:`~gateway.mapping.model.MappingError`; field-level problems, and segments out
of the standard order (:mod:`gateway.mapping.segment_order`), are
:class:`~gateway.hl7v2.errors.Issue` objects on the result (severity E: the
message must be rejected with AE and nothing stored; W: AA with a warning).
"""

from __future__ import annotations

import csv
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.hl7v2.errors import Issue
from gateway.hl7v2.parser import DEFAULT_ENCODING, Message, Segment
from gateway.mapping.context import CodeMap, MapContext, Naming, TypePolicy, new_urn, slug
from gateway.mapping.finalizers import FINALIZERS
from gateway.mapping.model import MappingError, MappingResult, ResourceIntent
from gateway.mapping import provider as _provider  # noqa: F401  (registers the PRD[Reference] converter)
from gateway.mapping.rules import Builder, CompiledRule, MappingConfigError, Rule, clone, compile_rule
from gateway.mapping.segment_order import SegmentOrder, compile_segment_order
from gateway.mapping.timestamps import hl7_to_utc_instant

__all__ = ["MappingConfigError", "MappingEngine"]


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
    ("referral-status", "target"): frozenset(
        "draft active on-hold revoked completed entered-in-error unknown".split()),
    ("referral-priority", "target"): frozenset("routine urgent asap stat".split()),
    ("diagnosis-type", "target"): frozenset(
        "unconfirmed provisional differential confirmed refuted entered-in-error".split()),
    ("diagnosis-action", "target"): frozenset(("entered-in-error",)),
}
ELEMENT_VALUE_SETS: dict[tuple[str, str], frozenset[str]] = {
    ("Appointment", "status"): VALUE_SETS[("appointment-status", "target")],
    ("Encounter", "status"): frozenset(
        "planned arrived triaged in-progress onleave finished cancelled entered-in-error unknown".split()),
    ("ServiceRequest", "status"): VALUE_SETS[("referral-status", "target")],
}
# Code maps the datatype converters read by name; they must exist.
REQUIRED_CODE_MAPS = ("name-use", "address-use", "telecom-use", "telecom-equipment", "identifier-systems",
                      "coding-systems", "yes-no", "duration-units")
# Sender file `segment_order:` -> the severity of an out-of-order segment (None: not checked).
ORDER_SEVERITY = {"error": "E", "warn": "W", "ignore": None}


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
            resource[element] = clone(self.force)
            return
        current = resource.get(element)
        if current is not None and self.allow is not None and current not in self.allow:
            current = None
        if current is None and self.default is not None:
            resource[element] = clone(self.default)
        elif current is None:
            resource.pop(element, None)


@dataclass(slots=True)
class CompiledResource:
    key: str
    resource_type: str
    anchor: str
    # per segment: (name, (field, apply) for plain rules, rules with a `when` condition)
    plan: list[tuple[str, tuple[tuple[int, Rule], ...], tuple[CompiledRule, ...]]]
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
    order: dict[str, SegmentOrder]  # event -> the standard segment order (none: not checked)


@dataclass(slots=True)
class Profile:
    """Everything compiled for one sender (or the default): code maps, naming, messages."""

    name: str
    codes: dict[str, CodeMap]
    naming: Naming
    messages: dict[str, CompiledMessage]  # "SIU^S12" -> spec
    namespace: str | None = None
    order_severity: str | None = "E"  # segment out of order: E (reject), W (warn) or None (not checked)


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
            glob = any(ch in what for ch in "*?[")
            out.append(("system", re.compile(fnmatch.translate(what)) if glob else what))
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
            same = spec.get("match_same") or []
            if not isinstance(same, list) or len(same) == 1 or not all(isinstance(e, str) for e in same):
                raise MappingConfigError(f"{where}: match_same must list a reference element and at least "
                                         f"one more element, e.g. [subject, code]")
            policies[resource_type] = TypePolicy(
                resource_type,
                _compile_selectors(spec.get("match", ["*"]), where),
                _compile_selectors(spec.get("never_match", []), where),
                dict(spec.get("merge", {})),
                tuple(same),
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
            if not isinstance(doc, dict) or "segment" not in doc or "resource" not in doc:
                raise MappingConfigError(f"{path}: a segment map needs 'segment', 'resource' and 'fields'")
            key = f"{doc['segment'].upper()}[{doc['resource']}]"
            if key in specs:
                raise MappingConfigError(f"{path}: {key} is mapped twice")
            specs[key] = (f"{path.name} {key}", list(doc.get("fields") or []))
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
        order_mode = doc.get("segment_order", "error")
        if order_mode not in ORDER_SEVERITY:
            raise MappingConfigError(f"{where}: segment_order must be error, warn or ignore, not {order_mode!r}")
        profile.order_severity = ORDER_SEVERITY[order_mode]
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
            _, base_fields = segment_specs.get(seg_key, ("", []))
            segment_specs[seg_key] = (f"{where} {seg_key}", base_fields + list(extra.get("fields") or []))
            into = extra.get("into") or []
            for key in [into] if isinstance(into, str) else into:
                extra_segments.setdefault(key, []).append(extra["segment"].upper())
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
            # A sender's extra segments join the plan once; extra rules for a segment already
            # in the plan were appended to that segment's rules.
            segments = list(dict.fromkeys([s.upper() for s in rspec["segments"]] + extra_segments.get(key, [])))
            plan = []
            for seg_name in segments:
                spec = segment_specs.get(f"{seg_name}[{rtype}]")
                if spec is None:
                    raise MappingConfigError(f"{rwhere}: no segment map {seg_name}[{rtype}] in mappings/segments/")
                label, fields = spec
                rules = [compile_rule(r, codes, seg_name, f"{label} rule {i + 1}") for i, r in enumerate(fields)]
                plain = tuple((r.field, r.apply) for r in rules if r.when is None)
                plan.append((seg_name, plain, tuple(r for r in rules if r.when is not None)))
            assign = [compile_rule(r, codes, "", f"{rwhere} assign {i + 1}", keys)
                      for i, r in enumerate(rspec.get("assign") or [])]
            for fin in rspec.get("finalize") or []:
                if fin not in FINALIZERS:
                    raise MappingConfigError(f"{rwhere}: unknown finalizer {fin!r}; known: {sorted(FINALIZERS)}")
            self._check_resource_options(rspec, rwhere, keys)
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
                require = spec.pop("require", None) or {}
                for element, issue in require.items():
                    if not isinstance(issue, dict) or "text" not in issue:
                        raise MappingConfigError(f"{where} event {event}: require {element} needs "
                                                 f"{{code, segment, field, text}}")
                if action not in (None, "upsert", "delete", "merge-into"):
                    raise MappingConfigError(f"{where} event {event}: unknown action {action!r}")
                compiled_event[key] = {"action": action, "require": require,
                                       "policies": _element_policies(types_by_key[key], spec, f"{where} {event}")}
            events[str(event).upper()] = compiled_event
        return CompiledMessage(doc["message"].upper(), [s.upper() for s in doc.get("required_segments", [])],
                               resources, events, self._compile_order(doc.get("segment_order"), where, events))

    @staticmethod
    def _compile_order(spec: Any, where: str, events: dict[str, Any]) -> dict[str, SegmentOrder]:
        """`segment_order`: one list of ranks for every event, or {default: [...], <event>: [...]}."""
        if spec is None:
            return {}
        if not isinstance(spec, dict):
            spec = {"default": spec}
        per_event: dict[str, SegmentOrder] = {}
        default = None
        for key, ranks in spec.items():
            key = str(key).upper()
            order = compile_segment_order(ranks, f"{where} segment_order {key}")
            if key == "DEFAULT":
                default = order
            elif key in events:
                per_event[key] = order
            else:
                raise MappingConfigError(f"{where}: segment_order names event {key}, which is not in events")
        if default is not None:
            for event in events:
                per_event.setdefault(event, default)
        return per_event

    @staticmethod
    def _check_resource_options(rspec: dict[str, Any], where: str, keys: set[str]) -> None:
        if rspec["key"] in keys:
            raise MappingConfigError(f"{where}: the key is used twice")
        if rspec.get("action", "upsert") not in ("upsert", "delete", "merge-into"):
            raise MappingConfigError(f"{where}: action must be upsert, delete or merge-into")
        if rspec.get("on_repeat", "warn") not in ("warn", "error", "each"):
            raise MappingConfigError(f"{where}: on_repeat must be warn, error or each")
        how = rspec.get("unidentified")
        if not (how in (None, "skip", "create") or (isinstance(how, dict) and "text" in how)):
            raise MappingConfigError(f"{where}: unidentified must be skip, create or {{code, segment, field, text}}")

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
        if profile.order_severity is not None:
            order = spec.order.get(event)
            if order is not None:
                order.check(msg.segments, profile.order_severity, ctx.issues)
        missing = [s for s in spec.required if msg.find(s) is None]
        if missing:
            raise MappingError(ctx.issues + [
                Issue("E", 100, f"required segment {s} is missing from this {message_type} message", s, 1)
                for s in missing])
        by_key: dict[str, ResourceIntent] = {}
        event_spec = spec.events.get(event, {})
        for rspec in spec.resources:
            for intent in self._map_resource(msg, ctx, rspec, event, event_spec.get(rspec.key), by_key):
                if rspec.key not in by_key:  # `ref:` and merge_target name the first of an `each` resource
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
                      event_spec: dict[str, Any] | None, by_key: dict[str, ResourceIntent]) -> list[ResourceIntent]:
        """The intents of one resource spec: one, or with ``on_repeat: each`` one per occurrence
        of the anchor segment (each DG1 its own Condition)."""
        if rspec.events is not None and event not in rspec.events:
            return []
        anchors = msg.find_all(rspec.anchor)
        if not anchors:
            return []
        if rspec.on_repeat == "each":
            intents = (self._map_one(msg, ctx, rspec, anchor, sequence, event_spec, by_key)
                       for sequence, anchor in enumerate(anchors, 1))
            return [intent for intent in intents if intent is not None]
        if len(anchors) > 1:
            ctx.at(rspec.anchor, 2)
            severity = "E" if rspec.on_repeat == "error" else "W"
            ctx.issue(severity, 100, f"{len(anchors)} {rspec.anchor} segments; only the first is mapped to "
                                     f"{rspec.resource_type}")
        intent = self._map_one(msg, ctx, rspec, anchors[0], 1, event_spec, by_key)
        return [intent] if intent is not None else []

    def _map_one(self, msg: Message, ctx: MapContext, rspec: CompiledResource, anchor: Segment, sequence: int,
                 event_spec: dict[str, Any] | None, by_key: dict[str, ResourceIntent]) -> ResourceIntent | None:
        """One resource: build it from its segments, let the event have its say, finalize it,
        and find what identifies it."""
        b, deferred = self._build(msg, ctx, rspec, anchor, sequence)
        resource = b.resource
        for element, policy in rspec.defaults.items():
            policy.apply(resource, element)
        action = rspec.action
        if event_spec:
            for element, policy in event_spec["policies"].items():
                policy.apply(resource, element)
            action = event_spec["action"] or action
            for element, how in event_spec.get("require", {}).items():
                if resource.get(element) in (None, "", [], {}):  # e.g. a referral with no concern
                    raise MappingError(ctx.issues + [Issue("E", int(how.get("code", 101)), how["text"],
                                                           how.get("segment", rspec.anchor), sequence,
                                                           how.get("field"))])
        for rule, seg, sequence in deferred:  # `when` rules see the settled status
            if rule.when.holds(resource):  # type: ignore[union-attr]
                ctx.sequence = sequence
                b.current.clear()
                rule.apply(seg, b, ctx)
        for name in rspec.finalize:
            FINALIZERS[name](b, ctx)
        if b.origins:  # scratch values (_start ...) not consumed by a finalizer never leave
            for key in [k for k in resource if k.startswith("_")]:
                del resource[key]
        policy = self._policies.get(rspec.resource_type)
        matches = policy.matches(resource.get("identifier") or []) if policy else []
        same: dict[str, Any] = {}
        if not matches and policy is not None and policy.same:
            same = {element: resource[element] for element in policy.same if resource.get(element)}
            if len(same) < len(policy.same):
                same = {}  # e.g. no code: nothing to know a resend by
        if not matches and not same and not self._unidentified(ctx, rspec, sequence):
            return None
        target = by_key.get(rspec.merge_target) if rspec.merge_target else None
        return ResourceIntent(
            full_url=new_urn(), resource_type=rspec.resource_type, resource=resource, matches=matches,
            action=action, merge=dict(policy.merge) if policy else {}, guard_time=ctx.guard_time,  # type: ignore[arg-type]
            merge_target=target.full_url if target else None, key=rspec.key, same=same,
        )

    @staticmethod
    def _build(msg: Message, ctx: MapContext, rspec: CompiledResource, anchor: Segment, anchor_sequence: int = 1
               ) -> tuple[Builder, list[tuple[CompiledRule, Segment, int]]]:
        """Run the assign rules, then every segment's plain rules; return the rules that wait
        for a condition (with the segment they read)."""
        b = Builder(rspec.resource_type)
        ctx.segment, ctx.sequence = "", 1
        for rule in rspec.assign:  # first, so e.g. the patient is the first participant
            b.current.clear()
            rule.apply(None, b, ctx)
        deferred: list[tuple[CompiledRule, Segment, int]] = []
        current = b.current
        for seg_name, plain, conditional in rspec.plan:
            segments = (anchor,) if seg_name == rspec.anchor else msg.find_all(seg_name)
            first = anchor_sequence if seg_name == rspec.anchor else 1  # ERR-2 names the right DG1
            for sequence, seg in enumerate(segments, first):
                ctx.sequence = sequence
                current.clear()
                fields = seg.fields
                count = len(fields)
                for field_no, apply in plain:
                    if field_no < count and fields[field_no]:  # most fields are empty: skip the call
                        apply(seg, b, ctx)
                for rule in conditional:
                    deferred.append((rule, seg, sequence))
        return b, deferred

    @staticmethod
    def _unidentified(ctx: MapContext, rspec: CompiledResource, sequence: int = 1) -> bool:
        """No identifier to match on: raise, skip the resource, or keep it (create every time)."""
        how = rspec.unidentified
        if how == "skip":
            return False
        if how is None or how == "create":
            return True
        if how.get("severity") == "W":  # skip this resource, say so, and keep the rest of the message
            ctx.at(how.get("segment", rspec.anchor), sequence, how.get("field"))
            ctx.issue("W", int(how.get("code", 101)), how["text"])
            return False
        raise MappingError(ctx.issues + [Issue(how.get("severity", "E"), int(how.get("code", 101)), how["text"],
                                               how.get("segment", rspec.anchor), sequence, how.get("field"))])
