"""The compiled index extractor (indexer.extract) gives exactly the rows of the plain
per-parameter extractor it replaced, kept here as the reference: for every resource in
tests/gp, every sample HL7 message mapped to FHIR, a synthetic SIU feed, and thousands of
randomly shaped resources (odd types, lists, None, long and accented strings, bad dates,
every reference form) for every indexed resource type."""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from gateway.hl7v2.parser import parse_message
from gateway.mapping.engine import MappingEngine
from gateway.store import indexer
from gateway.store.indexer import (MAX_VALUE, IndexRows, _dates, _strings, _token_texts, _tokens,
                                   normalise_string, split_reference, walk)
from gateway.store.search_params import RESOURCE_TYPES, SearchParam, indexed_params
from gateway.store.unit_of_work import _index_rows
from gateway.synthetic import adt_message, make_child, siu_mix

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "gp"))
from generate import lines  # noqa: E402


# --- the reference: each parameter on its own, each path walked from the root ----------------

@lru_cache(maxsize=None)
def _params(resource_type: str) -> tuple[SearchParam, ...]:
    return tuple(indexed_params(resource_type))


def reference_extract(resource_type: str, resource: dict[str, Any]) -> IndexRows:
    rows = IndexRows()
    for param in _params(resource_type):
        _reference_param(param, resource, rows)
    return rows


def _reference_param(param: SearchParam, resource: dict[str, Any], rows: IndexRows) -> None:
    name = param.name
    for path in param.paths:
        for value in walk(resource, path):
            if param.type == "token":
                for system, code in _tokens(value):
                    rows.token.append((name, system[:MAX_VALUE], code[:MAX_VALUE]))
                if isinstance(value, dict):
                    for text in _token_texts(value):
                        rows.string.append((name + ":text", normalise_string(text), text[:MAX_VALUE]))
            elif param.type == "string":
                for text in _strings(value):
                    rows.string.append((name, normalise_string(text), text[:MAX_VALUE]))
            elif param.type == "date":
                for low, high in _dates(value):
                    rows.date.append((name, low, high))
            elif param.type == "reference":
                ref = value.get("reference") if isinstance(value, dict) else None
                target = split_reference(ref) if ref else None
                if target and (not param.targets or target[0] in param.targets):
                    rows.reference.append((name, target[0], target[1][:MAX_VALUE]))
            elif param.type == "uri" and isinstance(value, str):
                rows.token.append((name, "", value[:MAX_VALUE]))


def outcome(fn, resource_type: str, resource: dict[str, Any]):
    try:
        rows = fn(resource_type, resource)
    except Exception as exc:  # malformed input: both must refuse it
        return "raised", type(exc).__name__
    # repr: on malformed input a "code" may be a list, and both copy it into the row as it is
    return {kind: Counter(map(repr, getattr(rows, kind))) for kind in ("token", "string", "date", "reference")}


def assert_same(resources: list[tuple[str, dict[str, Any]]]) -> int:
    rows = 0
    for resource_type, resource in resources:
        expected = outcome(reference_extract, resource_type, resource)
        assert outcome(indexer.extract, resource_type, resource) == expected, (resource_type, resource)
        if not isinstance(expected, tuple):
            rows += sum(sum(c.values()) for c in expected.values())
    return rows


# --- corpora ------------------------------------------------------------------------------------

def with_meta(resource: dict[str, Any]) -> dict[str, Any]:
    """As the unit of work stores it (versionId, lastUpdated, source are indexed too)."""
    meta = dict(resource.get("meta") or {})
    meta.update(versionId="1", lastUpdated="2025-01-01T00:00:00.000000Z", source="urn:gateway:test")
    return {**resource, "meta": meta}


def gp_corpus() -> list[dict[str, Any]]:
    out = [with_meta(r) for r in lines(3000)]
    for path in sorted((ROOT / "tests" / "gp").rglob("*.ndjson")):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    for name in ("uk_core_r4_collection.json", "gpconnect_stu3_structured.json"):
        bundle = json.loads((ROOT / "tests" / "gp" / name).read_text())
        out += [e["resource"] for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    return [r for r in out if isinstance(r, dict) and isinstance(r.get("resourceType"), str)]


def message_corpus() -> list[dict[str, Any]]:
    engine = MappingEngine(ROOT / "mappings")
    texts = [p.read_bytes() for p in sorted((ROOT / "tests" / "messages").rglob("*.hl7"))]
    texts += [t.encode() for t in siu_mix(40, 400)]
    texts += [adt_message(make_child(i), event, control_id=f"A{i}{event}").encode()
              for i in range(20) for event in ("A04", "A08", "A28", "A31")]
    out = []
    for text in texts:
        try:
            result = engine.map(parse_message(text))
        except Exception:  # the bad/ samples: refused before any resource exists
            continue
        # As stored: the urn:uuid placeholders between intents become Type/id references
        ids = {i.full_url: f"{i.resource_type}/m{len(out)}-{n}" for n, i in enumerate(result.intents)}
        for intent in result.intents:
            out.append(with_meta({"resourceType": intent.resource_type, **resolve(intent.resource, ids)}))
    return out


def resolve(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: ids.get(v, v) if k == "reference" and isinstance(v, str) else resolve(v, ids)
                for k, v in node.items()}
    return [resolve(v, ids) for v in node] if isinstance(node, list) else node


def test_same_rows_on_gp_records():
    resources = gp_corpus()
    assert len(resources) > 3000
    assert assert_same([(r["resourceType"], r) for r in resources]) > 10000


def test_same_rows_on_mapped_hl7_messages():
    resources = message_corpus()
    assert len({r["resourceType"] for r in resources}) >= 4 and len(resources) > 500
    assert assert_same([(r["resourceType"], r) for r in resources]) > 5000


# --- random resources ---------------------------------------------------------------------------

_KEYS = ("coding", "text", "value", "code", "system", "display", "reference", "start", "end", "family",
         "given", "prefix", "suffix", "line", "city", "district", "state", "postalCode", "country")
_STRINGS = ("", " ", "Smith", "ÉLODIE  ", "Ünïcödé", "x" * 300, "é" * 200 + "tail", "2024", "2024-05",
            "2024-12", "2024-05-01", "2024-05-01T10:00", "2024-05-01T10:00:00Z", "2024-05-01T10:00:00.5+01:00",
            "2024-05-01T10:00+01:00", "last tuesday", "2024-13-01", "Patient/p1", "Practitioner/d-1",
            "Location/L1/_history/2", "http://x.org/fhir/Patient/p2", "patient/lower", "urn:uuid:1",
            "#contained", "Patient", "Patient/", "a/b/c")


def _value(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if roll < 0.35:
        return rng.choice(_STRINGS)
    if roll < 0.42:
        return rng.choice((None, True, False, 0, 7, 2.5, -1))
    if roll < 0.72 or depth > 2:
        return {k: _value(rng, depth + 1) if rng.random() < 0.15 else rng.choice(_STRINGS)
                for k in rng.sample(_KEYS, rng.randint(0, 4))}
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def _tree(rng: random.Random, path: tuple[str, ...]) -> Any:
    """A value under which ``path`` leads somewhere (sometimes through lists)."""
    if not path:
        return _value(rng, 0)
    node = {path[0]: _tree(rng, path[1:])}
    if rng.random() < 0.3:
        node[rng.choice(_KEYS)] = _value(rng, 1)
    return [node, {path[0]: _tree(rng, path[1:])}] if rng.random() < 0.3 else node


def random_resource(rng: random.Random, resource_type: str) -> dict[str, Any]:
    paths = [path for param in indexed_params(resource_type) for path in param.paths]
    resource: dict[str, Any] = {"resourceType": resource_type, "id": "r1"}
    for path in rng.sample(paths, rng.randint(1, len(paths))):
        value = _tree(rng, path[1:])
        existing = resource.get(path[0])
        if isinstance(existing, dict) and isinstance(value, dict) and rng.random() < 0.7:
            existing.update(value)  # e.g. meta.tag and meta.source together
        else:
            resource[path[0]] = value if rng.random() < 0.8 else [value, _tree(rng, path[1:])]
    return resource


@pytest.mark.parametrize("seed", range(4))
def test_same_rows_on_random_resources(seed):
    rng = random.Random(seed)
    resources = [(t, random_resource(rng, t)) for _ in range(150) for t in RESOURCE_TYPES]
    assert assert_same(resources) > 1000


def test_index_rows_keyed_as_before():
    """_index_rows (the write path) builds its keyed rows from extract unchanged."""
    resource = with_meta(next(r for r in lines(20) if r["resourceType"] == "Appointment"))
    keyed = _index_rows("Appointment", "a1", resource)
    rows = reference_extract("Appointment", resource)
    assert set(keyed["idx_token"].values()) == {("Appointment", "a1", *r) for r in rows.token}
    assert set(keyed["idx_string"].values()) == {("Appointment", "a1", *r) for r in rows.string}
    assert set(keyed["idx_date"].values()) == {("Appointment", "a1", *r) for r in rows.date}
    assert set(keyed["idx_reference"].values()) == {("Appointment", "a1", *r) for r in rows.reference}
    assert {k for k in keyed["idx_reference"]} == {r for r in rows.reference}
    assert ("patient", "Patient", "p0-1") in keyed["idx_reference"]
