"""Mapping rules: one YAML rule -> one compiled closure.

Why closures: a rule such as ``{field: 3, type: "CX[Identifier]", to: "identifier[+]"}``
is checked and resolved once, when the mappings load -- converter looked up, its
options validated, the target path parsed into steps -- and becomes a function
``apply(segment, builder, ctx)`` that only reads the field and writes the value.
Nothing on the hot path interprets YAML.

Paths are FHIR Shorthand style: ``name[+]`` appends a new element, ``name[=]``
is the element the last ``name[+]`` created while the same segment was read,
a plain name is an object key.  ``with`` adds constants to the element created
by the last ``[+]`` (e.g. ``status: accepted`` on a new participant).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from gateway.hl7v2.parser import Segment
from gateway.mapping.context import CodeMap, MapContext
from gateway.mapping.datatypes import CONVERTERS, Implied, realize

__all__ = ["Builder", "CompiledRule", "Condition", "ElementPath", "MappingConfigError", "Rule", "clone",
           "compile_rule"]


class MappingConfigError(ValueError):
    """The mapping data is wrong (raised at load time, never while mapping a message)."""


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


def clone(value: Any) -> Any:
    """Copy a YAML constant so no two resources share a mutable object."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def _set_missing(holder: dict[str, Any], constants: dict[str, Any]) -> None:
    for key, value in constants.items():
        if key not in holder:
            holder[key] = clone(value)


def _has(resource: dict[str, Any], dotted: str) -> bool:
    obj: Any = resource
    for key in dotted.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return False
        obj = obj[key]
    return obj not in (None, "", [], {})


Put = Callable[[Builder, Any], bool]


def _make_put(path: ElementPath, with_: dict[str, Any] | None, overwrite: Any, join: str | None) -> Put:
    """Compile a path + options into ``put(builder, value) -> written?``.

    The two shapes most rules have (``status``, ``identifier[+]``) get their own small
    closures; every other path walks its steps."""
    steps = path.steps
    inner, (last_key, last_mode, last_prefix) = steps[:-1], steps[-1]
    with_at = path.with_at
    last_index = len(steps) - 1
    never = overwrite == "never"
    allowed = frozenset(overwrite) if isinstance(overwrite, list) else None

    if not inner and last_mode is None:
        def put_key(b: Builder, value: Any) -> bool:
            obj = b.resource
            existing = obj.get(last_key)
            if existing is not None and existing != "":
                if join is not None and isinstance(existing, str):
                    value = f"{existing}{join}{value}"
                elif never or (allowed is not None and value not in allowed):
                    return False
            obj[last_key] = value
            if with_:
                _set_missing(obj, with_)
            return True
        return put_key

    if not inner and last_mode == "+":
        def put_append(b: Builder, value: Any) -> bool:
            items = b.resource.get(last_key)
            if items is None:
                items = b.resource[last_key] = []
            items.append(value)
            if isinstance(value, dict):
                b.current[last_prefix] = value
                if with_:
                    _set_missing(value, with_)
            return True
        return put_append

    def put(b: Builder, value: Any) -> bool:
        obj = b.resource
        for i, (key, mode, prefix) in enumerate(inner):
            if mode is None:
                nxt = obj.get(key)
                if nxt is None:
                    nxt = obj[key] = {}
                obj = nxt
            elif mode == "+":
                nxt = {k: clone(v) for k, v in with_.items()} if (with_ and i == with_at) else {}
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
    field: int = 0  # the HL7 field read (0: none -- constants and refs), to skip empty fields cheaply


def compile_rule(spec: dict[str, Any], codes: dict[str, CodeMap], segment: str, where: str,
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
    if ("value" in spec or "ref" in spec) and set(spec) - RULE_KEYS:
        raise MappingConfigError(f"{where}: unknown key(s) {sorted(set(spec) - RULE_KEYS)}")

    if "value" in spec:
        return CompiledRule(_const_rule(put, spec["value"], skip_if), when, f"{spec['to']} = {spec['value']!r}")
    if "ref" in spec:
        if resource_keys is not None and spec["ref"] not in resource_keys:
            raise MappingConfigError(f"{where}: ref {spec['ref']!r} names no earlier resource")
        return CompiledRule(_ref_rule(put, spec["ref"], skip_if), when, f"{spec['to']} -> {spec['ref']}")
    return CompiledRule(_field_rule(spec, codes, segment, where, put, skip_if), when,
                        f"{segment}-{spec.get('field')} -> {spec['to']}", int(spec["field"]))


def _const_rule(put: Put, value: Any, skip_if: str | None) -> Rule:
    def apply(seg: Segment | None, b: Builder, ctx: MapContext) -> None:
        if skip_if and _has(b.resource, skip_if):
            return
        put(b, clone(value))
    return apply


def _ref_rule(put: Put, key: str, skip_if: str | None) -> Rule:
    def apply(seg: Segment | None, b: Builder, ctx: MapContext) -> None:
        if skip_if and _has(b.resource, skip_if):
            return
        url = ctx.keyed.get(key)
        if url:
            put(b, {"reference": url})
    return apply


MEMO_SIZE = 1024  # per rule: clinicians, clinics, locations and codes repeat all day


def _freeze(value: Any) -> Any:
    """A converter result in a form that can be stored and handed out again as a fresh copy
    (orjson bytes: ~1 us to load, several times cheaper than converting again)."""
    if value.__class__ is Implied:
        return (value.resource_type, orjson.dumps(value.resource), value.display, value.key)
    if isinstance(value, (dict, list)):
        return orjson.dumps(value)
    return value


def _thaw(frozen: Any) -> Any:
    if frozen.__class__ is bytes:
        return orjson.loads(frozen)
    if frozen.__class__ is tuple:
        resource_type, blob, display, key = frozen
        return Implied(resource_type, orjson.loads(blob), display, key)
    return frozen


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
    if on_error not in ("error", "warn", "ignore"):
        raise MappingConfigError(f"{where}: on_error must be error, warn or ignore")
    # ignore: another rule reads the same field and reports it (a fallback must not say it twice)
    severity = {"error": "E", "warn": "W"}.get(on_error)
    target = spec["to"]
    scratch = target.startswith("_")
    memo: dict[str, Any] | None = {} if getattr(convert, "memo", False) else None

    def failed(ctx: MapContext, exc: ValueError) -> None:
        if severity is None:
            return
        consequence = "the message is rejected" if severity == "E" else "the value was left out"
        ctx.issue(severity, 102, f"{ctx.location} is not valid: {exc}; {consequence}")

    def repetitions(seg: Segment, b: Builder, ctx: MapContext) -> list[str] | tuple[str, ...]:
        """The raw repetitions to convert ([] when there is nothing to do); sets the location."""
        fields = seg.fields
        raw = fields[field_no] if field_no < len(fields) else ""
        if not raw or raw == '""' or (skip_if and _has(b.resource, skip_if)):
            return ()
        ctx.segment, ctx.field, ctx.component = segment, field_no, component
        sep = ctx.enc.repetition
        if sep not in raw:
            return (raw,)
        return raw.split(sep) if repeat_all else (raw.split(sep, 1)[0],)

    def apply(seg: Segment | None, b: Builder, ctx: MapContext) -> None:
        enc = ctx.enc
        for i, rep in enumerate(repetitions(seg, b, ctx), 1):  # type: ignore[arg-type]
            if not rep or rep == '""':
                continue
            comps = rep.split(enc.component)
            if component:
                if component > len(comps) or not comps[component - 1]:
                    continue
                comps = comps[component - 1].split(enc.subcomponent)
            ctx.repetition = i
            try:
                value = convert(comps, ctx, seg)  # type: ignore[arg-type]
            except ValueError as exc:
                failed(ctx, exc)
                continue
            if value is not None and put(b, value) and scratch:
                b.origins[target] = (segment, ctx.sequence, field_no, component)

    def apply_memo(seg: Segment | None, b: Builder, ctx: MapContext) -> None:
        """As apply, reusing an earlier conversion of the same text (pure converters only).
        A conversion that reported an issue is not memoised, so its issue is reported again."""
        enc = ctx.enc
        for i, rep in enumerate(repetitions(seg, b, ctx), 1):  # type: ignore[arg-type]
            if not rep or rep == '""':
                continue
            comps = rep.split(enc.component)
            if component:
                if component > len(comps) or not comps[component - 1]:
                    continue
                rep = comps[component - 1]
                comps = rep.split(enc.subcomponent)
            ctx.repetition = i
            key = (rep, ctx.sender) if ctx.memo_ok and enc.escape not in rep else None
            hit = memo.get(key) if key is not None else None  # type: ignore[union-attr]
            if hit is not None:
                value = _thaw(hit)
            else:
                issues = len(ctx.issues)
                try:
                    value = convert(comps, ctx, seg)  # type: ignore[arg-type]
                except ValueError as exc:
                    failed(ctx, exc)
                    continue
                if value is None:
                    continue
                if key is not None and len(ctx.issues) == issues:
                    if len(memo) >= MEMO_SIZE:  # type: ignore[arg-type]
                        memo.clear()  # type: ignore[union-attr]
                    memo[key] = _freeze(value)  # type: ignore[index]
            if put(b, realize(ctx, value)) and scratch:
                b.origins[target] = (segment, ctx.sequence, field_no, component)

    return apply if memo is None else apply_memo
