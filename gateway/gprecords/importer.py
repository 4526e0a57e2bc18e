"""The one import path for GP records: Bundles (STU3 or R4) and NDJSON, into the store.

Every resource goes through the same steps:

1. **prepare** (no database): STU3 is converted to R4 (``stu3.py``); types the
   gateway does not keep are skipped (counted); unknown types and resources that
   fail R4 validation are errors, naming the entry or line.
2. **settle** its identity: a Patient by NHS number (``matching.py``); anything else
   by its own identifiers, then by its *source-record identifier*
   (``codes.SOURCE_RECORD_ID/<source>`` = ``Type/id`` as the source named it), which
   every imported resource carries.  That identifier is what makes a re-import
   idempotent for resources with no identifiers of their own, and what resolves
   the source's references in later files.
3. **resolve references**: to an entry of the same Bundle, to a resource imported
   earlier from the same source, or to a gateway id.  A reference to a type the
   gateway does not keep (Slot, Medication ...) becomes a logical reference
   (identifier + display).  Anything else is a "reference to nothing": an error.
4. **merge and write** through ``UnitOfWork`` (versions, index, history), then
   ``run_after_changes`` (markers, rules, events) in the same transaction.

A Bundle is all or nothing: every problem of every entry is collected, and any
problem means nothing is written.  NDJSON is committed in bounded batches (short
transactions, so a running ``gateway serve`` keeps writing in between), each line
isolated (refused before it writes, or in a savepoint when it may write twice): a bad
line is reported with its number and the rest go in.  For a large NDJSON import, step 1
runs in a worker process (``_pipelined``): the next chunk is validated while this one is
written; each batch asks for its identities in one query and writes its new rows with one
statement per table (``UnitOfWork.defer_inserts``).
Precedence when a record joins a resource another source wrote: see ``_merge``.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson
from sqlalchemy.engine import Engine

from gateway import codes
from gateway.api.errors import FhirError
from gateway.api.validation import validate_resource
from gateway.gprecords import codelists, detect, ndjson, stu3
from gateway.gprecords.matching import PatientMatch, match_patient
from gateway.gprecords.report import ImportReport, MatchEntry, Problem
from gateway.store.cache import WriterCache
from gateway.store.hooks import WriteRejected, run_after_changes
from gateway.store.ids import new_id
from gateway.store.indexer import split_reference
from gateway.store.search_params import RESOURCE_TYPES, params_for
from gateway.store.unit_of_work import Stored, UnitOfWork, dialect_of, unit_of_work

# What an import may write (Subscriptions are an API matter, not a record).
IMPORT_TYPES = frozenset(RESOURCE_TYPES) - {"Subscription"}
DEFAULT_BATCH = 500
# Entries the SQLite write-through cache keeps: enough for a batch's patients and their
# references, small enough that memory stays flat however long the file (measured).
CACHE_LIMIT = 2000
_DNA_SOURCES = ("Observation", "Encounter")


class Unresolved(Exception):
    """References that name nothing (collected for one resource)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(p for _path, p in problems))
        self.problems = problems


# --- sources ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Source:
    """Where records come from: ``uri`` goes to meta.source, ``slug`` into identifier systems."""

    uri: str
    slug: str

    @property
    def record_system(self) -> str:
        return f"{codes.SOURCE_RECORD_ID}/{self.slug}"


def make_source(value: str) -> Source:
    text = value.strip()
    uri = text if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", text) else f"urn:gateway:source:{_slug(text)}"
    bare = re.sub(r"^[a-z]+://", "", text.lower())
    slug = _slug(bare)
    if len(slug) > 48:  # keep identifier systems short; the hash keeps them distinct
        slug = slug[:40] + "-" + hashlib.sha1(text.encode()).hexdigest()[:7]
    return Source(uri, slug or "unknown")


def ods_source(ods_code: str) -> Source:
    """A GP practice as a source: its ODS code, as the ODS ORD API names the organisation."""
    return Source(f"https://directory.spineservices.nhs.uk/ORD/2-0-0/organisations/{ods_code}",
                  f"ods-{_slug(ods_code)}")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- prepared resources ---------------------------------------------------------------------------
@dataclass(slots=True)
class Item:
    where: str
    rtype: str
    source_id: str | None
    full_url: str | None
    resource: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    target_id: str | None = None
    existing: Stored | None = None
    match: PatientMatch | None = None
    resolved: bool = False  # references already rewritten (resolve_all ran)

    @property
    def source_key(self) -> str | None:
        return f"{self.rtype}/{self.source_id}" if self.source_id else None


def _skip_or_reject(report: Any, where: Any, rtype: str, version: str, label: str) -> None:
    """A type this gateway does not store: counted as skipped when FHIR knows it,
    reported as an error when it is no FHIR ``label`` resource type at all."""
    if _known_type(rtype, version):
        report.skipped += 1
        report.skipped_types[rtype] += 1
    else:
        report.error(Problem(where, f"unknown resource type {rtype!r} (not a FHIR {label} resource type)",
                             code="not-supported"))


def _known_type(rtype: str, version: str) -> bool:
    try:
        if version == detect.STU3:
            from fhir.resources.STU3 import get_fhir_model_class
        else:
            from fhir.resources.R4B import get_fhir_model_class
        get_fhir_model_class(rtype)
        return True
    except Exception:
        return False


def prepare(raw: Any, version: str, where: str, report: ImportReport) -> Item | None:
    """Convert and validate one resource; None when skipped or wrong (recorded in ``report``)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("resourceType"), str):
        report.error(Problem(where, "not a FHIR resource (a JSON object with resourceType)", code="structure"))
        return None
    stype = raw["resourceType"]
    source_id = str(raw["id"]) if raw.get("id") not in (None, "") else None
    notes: list[str] = []
    if version == detect.STU3:
        target = stu3.r4_type(stype)
        if target is None:
            _skip_or_reject(report, where, stype, version, "STU3")
            return None
        converted = stu3.convert(raw)
        resource, notes = converted.resource or {}, converted.notes
    else:
        resource = raw
    rtype = resource["resourceType"]
    if rtype not in IMPORT_TYPES:
        _skip_or_reject(report, where, rtype, detect.R4, "R4")
        return None
    try:
        validate_resource(rtype, resource)
    except FhirError as exc:
        for issue in exc.issues or [{"diagnostics": exc.diagnostics, "expression": exc.expression or []}]:
            report.error(Problem(where, issue.get("diagnostics", exc.diagnostics),
                                 list(issue.get("expression") or []), issue.get("code", "invalid")))
        return None
    for note in notes:
        report.notes[f"{stype}: {note}"] += 1
    body = {k: v for k, v in resource.items() if k not in ("id", "text")}  # narrative: the source's, not ours
    return Item(where, rtype, source_id, None, body, notes)


# --- the writer: identity, references, merge, write -------------------------------------------
class _Writer:
    def __init__(self, uow: UnitOfWork, source: Source, report: ImportReport) -> None:
        self.uow = uow
        self.source = source
        self.report = report
        self.local: dict[str, str] = {}  # source reference (fullUrl, Type/id) -> gateway Type/id
        self.by_identity: dict[tuple[str, str, str], str] = {}  # same resource twice in one Bundle
        self.written: list[str] = []  # versioned refs, for the Provenance
        self._dna = codelists.did_not_attend()

    # identity ---------------------------------------------------------------------------------
    def settle(self, item: Item) -> None:
        """Find (or allot) the gateway id of ``item``; register its source references."""
        system = self.source.record_system
        ident = item.resource.setdefault("identifier", []) if "identifier" in params_for(item.rtype) else None
        if item.rtype == "Patient":
            item.match = match_patient(self.uow, item.resource, system, item.source_key or "", self.source.uri,
                                       self.source.slug)
            item.existing = item.match.existing
        else:
            item.existing = self._find(item)
        keys = self._identity_keys(item)
        earlier = next((self.by_identity[k] for k in keys if k in self.by_identity), None)
        if earlier is not None and (item.existing is None or item.existing.res_id == earlier):
            item.target_id = earlier
            item.existing = self.uow.get(item.rtype, earlier)
        else:
            item.target_id = item.existing.res_id if item.existing is not None else new_id()
        for key in keys:
            self.by_identity.setdefault(key, item.target_id)
        if ident is not None and item.source_key:
            if not any(i.get("system") == system and i.get("value") == item.source_key for i in ident):
                ident.append({"use": "secondary", "system": system, "value": item.source_key})
        if ident == []:
            item.resource.pop("identifier")
        ref = f"{item.rtype}/{item.target_id}"
        if item.source_key:
            self.local[item.source_key] = ref
        if item.full_url:
            self.local[item.full_url] = ref

    def prefetch(self, items: list[Item]) -> None:
        """Ask for every identity key of a batch at once (what ``settle`` will look up)."""
        wanted: dict[tuple[str, str], list[str]] = {}
        for item in items:
            if "identifier" in params_for(item.rtype):
                for rtype, system, value in self._identity_keys(item):
                    wanted.setdefault((rtype, system), []).append(value)
        for (rtype, system), values in wanted.items():
            self.uow.prefetch_identifiers(rtype, system, values)

    def _identity_keys(self, item: Item) -> list[tuple[str, str, str]]:
        out = []
        for i in item.resource.get("identifier") or ():
            if isinstance(i, dict) and i.get("system") and i.get("value") and "nhs-number-unverified" not in i["system"]:
                out.append((item.rtype, i["system"], str(i["value"])))
        if item.source_key:
            out.append((item.rtype, self.source.record_system, item.source_key))
        return out

    def _find(self, item: Item) -> Stored | None:
        if "identifier" not in params_for(item.rtype):
            return None
        for rtype, system, value in self._identity_keys(item):
            for res_id in self.uow.find_by_token(rtype, "identifier", system, value):
                stored = self.uow.get(rtype, res_id)
                if stored is not None and not stored.deleted:
                    return stored
        return None

    # references -------------------------------------------------------------------------------
    def resolve_all(self, item: Item) -> None:
        """Rewrite every reference of the item's resource (its own copy) in place.  Nothing
        is copied and no element path is built unless a reference names nothing: this walk
        touches every element of every imported resource."""
        problems: list[tuple[str, str]] = []
        self._walk(item.resource, [item.rtype], problems)
        if problems:
            raise Unresolved(problems)
        item.resolved = True

    def _walk(self, node: Any, trail: list[Any], problems: list[tuple[str, str]]) -> None:
        if isinstance(node, dict):
            reference = node.get("reference")
            if isinstance(reference, str):
                resolved = self._resolve(reference, trail, problems)
                if isinstance(resolved, dict):  # a logical reference
                    del node["reference"]
                    for key, value in resolved.items():
                        node.setdefault(key, value)
                else:
                    node["reference"] = resolved
            for key, value in node.items():
                if key != "contained" and isinstance(value, (dict, list)):
                    trail.append(key)
                    self._walk(value, trail, problems)
                    trail.pop()
        elif isinstance(node, list):
            for index, value in enumerate(node):
                if isinstance(value, (dict, list)):
                    trail.append(index)
                    self._walk(value, trail, problems)
                    trail.pop()

    def _resolve(self, reference: str, trail: list[Any], problems: list[tuple[str, str]]) -> str | dict[str, Any]:
        if reference.startswith("#"):
            return reference
        if reference in self.local:
            return self.local[reference]
        parts = None if reference.startswith(("urn:uuid:", "urn:oid:")) else split_reference(reference)
        if parts is None:
            problems.append((_path(trail), f"reference {reference!r} names no entry of this record"))
            return reference
        rtype, rid = parts
        key = f"{rtype}/{rid}"
        if key in self.local:
            return self.local[key]
        if rtype not in IMPORT_TYPES:
            # A type the gateway does not keep: say what it was, point nowhere.
            return {"identifier": {"system": self.source.record_system, "value": key}, "display": key}
        if "identifier" in params_for(rtype):
            for res_id in self.uow.find_by_token(rtype, "identifier", self.source.record_system, key):
                self.local[key] = f"{rtype}/{res_id}"
                return self.local[key]
        stored = self.uow.get(rtype, rid)
        if stored is not None and not stored.deleted:
            return key
        problems.append((_path(trail), f"reference {reference!r} names no resource in this import or the gateway"))
        return reference

    # writing ----------------------------------------------------------------------------------
    def write(self, item: Item) -> Stored | None:
        if not item.resolved:
            self.resolve_all(item)
        if item.rtype == "Patient":
            _registered_practice(item.resource)
        existing = item.existing
        live = existing if existing is not None and not existing.deleted else None
        same_source = live is not None and (live.resource.get("meta") or {}).get("source") == self.source.uri
        merged = _merge(live.resource if live else None, item.resource, same_source, item.rtype)
        stored = None
        if live is not None and _same(live.resource, merged):
            self.report.unchanged += 1
            stored = live
        else:
            source = self.source.uri if live is None or same_source else \
                (live.resource.get("meta") or {}).get("source", "")
            if existing is None:  # an id settle() just allotted: nothing to read back first
                stored = self.uow.create(item.rtype, merged, res_id=item.target_id, source=source)
            else:
                stored = self.uow.update(item.rtype, item.target_id, merged, source=source, before=existing)
            self.written.append(f"{stored.ref}/_history/{stored.version_id}")
            if live is None:
                self.report.created += 1
            else:
                self.report.updated += 1
        if item.match is not None:
            self.report.add_match(MatchEntry(item.source_key or item.where, stored.ref, item.match.outcome,
                                                  item.match.reason, item.match.nhs_number))
        if item.rtype in _DNA_SOURCES:
            self._derive_noshow(item, stored)
        return stored

    def may_derive(self, item: Item) -> bool:
        """Could writing ``item`` also write a derived Appointment?  A new entry only if it
        carries a did-not-attend code itself; an update always may (the stored code counts)."""
        if item.rtype not in _DNA_SOURCES:
            return False
        if item.existing is not None:
            return True
        r = item.resource
        return self._dna.matches(r.get("code") if item.rtype == "Observation" else
                                 (r.get("type") or []) + (r.get("reasonCode") or [])) is not None

    def _derive_noshow(self, item: Item, evidence: Stored) -> None:
        """A coded "did not attend" entry becomes an Appointment (status noshow) for the same
        Patient, so it counts with hospital no-shows; it points back at its evidence."""
        r = evidence.resource
        if r.get("status") == "entered-in-error" or (item.rtype == "Encounter" and r.get("appointment")):
            return  # an Encounter for a booked Appointment: that Appointment carries the status
        found = self._dna.matches(r.get("code") if item.rtype == "Observation" else
                                  (r.get("type") or []) + (r.get("reasonCode") or []))
        subject = (r.get("subject") or {}).get("reference", "")
        if found is None or not subject.startswith("Patient/"):
            return
        when = r.get("effectiveDateTime") or (r.get("effectivePeriod") or r.get("period") or {}).get("start") \
            or r.get("issued")
        appointment: dict[str, Any] = {
            "resourceType": "Appointment", "status": "noshow",
            "identifier": [{"use": "secondary", "system": self.source.record_system,
                            "value": f"did-not-attend/{evidence.ref}"}],
            "description": f"Did not attend (coded entry {found[1]} {self._dna.displays.get(found, '')}".rstrip()
                           + " in the GP record)",
            "participant": [{"actor": {"reference": subject}, "required": "required", "status": "accepted"}],
            "extension": [{"url": codes.EXT_DERIVED_FROM, "valueReference": {"reference": evidence.ref}}],
        }
        if when and "T" in when:
            appointment["start"] = appointment["end"] = when
        elif when:
            appointment["requestedPeriod"] = [{"start": when, "end": when}]
        derived = Item(item.where, "Appointment", None, None, appointment)
        derived.existing = self._find(derived)
        derived.target_id = derived.existing.res_id if derived.existing else new_id()
        before = self.report.created + self.report.updated
        self.write(derived)
        self.report.derived += (self.report.created + self.report.updated) - before

    def provenance(self, what: str) -> None:
        """One Provenance per transaction: which source wrote these versions, and when."""
        if not self.written:
            return
        self.uow.create("Provenance", {
            "resourceType": "Provenance",
            "target": [{"reference": ref} for ref in self.written],
            "recorded": self.uow.now.isoformat(),
            "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                     "code": "UPDATE", "display": "revise"}]},
            "agent": [{"type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
                "who": {"display": self.source.uri}},
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                      "code": "assembler"}]},
                 "who": {"reference": codes.GATEWAY_DEVICE_REF}}],
            "entity": [{"role": "source", "what": {"display": what}}],
        }, source=self.source.uri)
        self.written = []


def _path(trail: list[Any]) -> str:
    """['Observation', 'performer', 0] -> 'Observation.performer[0]' (FHIRPath-like)."""
    return trail[0] + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in trail[1:])


def _registered_practice(patient: dict[str, Any]) -> None:
    """GP Connect names the registered practice in managingOrganization; the gateway's
    contract is Patient.generalPractitioner (the practice Organization + usual GP)."""
    org = (patient.get("managingOrganization") or {}).get("reference", "")
    gps = patient.setdefault("generalPractitioner", [])
    if org.startswith("Organization/") and not any((g.get("reference") or "").startswith("Organization/")
                                                   for g in gps):
        gps.insert(0, {"reference": org})
    if not gps:
        del patient["generalPractitioner"]


def _merge(current: dict[str, Any] | None, incoming: dict[str, Any], same_source: bool,
           rtype: str) -> dict[str, Any]:
    """Precedence (docs/gprecords.md):

    * a resource this source wrote (same meta.source): the record's elements replace
      the stored ones; elements the record does not carry are kept;
    * a resource another source wrote (the hospital's Patient, a practice Organization
      from PD1): the stored elements are kept and the record only fills gaps — except
      Patient.generalPractitioner, where the GP record is the authority on its own
      registration and replaces it;
    * identifiers are always the union (every source's ids stay findable).
    """
    if current is None:
        return incoming
    merged = {k: v for k, v in current.items() if k not in ("id", "meta", "resourceType")}
    meta = {k: v for k, v in (current.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        merged["meta"] = meta
    for key, value in incoming.items():
        if key in ("meta", "resourceType"):
            continue
        if key == "identifier":
            merged[key] = _union(current.get(key) or [], value or [])
        elif same_source or key not in merged or (rtype == "Patient" and key == "generalPractitioner"):
            merged[key] = value
        elif key == "extension":
            urls = {e.get("url") for e in merged[key] if isinstance(e, dict)}
            merged[key] = merged[key] + [e for e in value if isinstance(e, dict) and e.get("url") not in urls]
    return merged


def _union(old: list[Any], new: list[Any]) -> list[Any]:
    out = list(old)
    seen = {(i.get("system"), i.get("value")) for i in old if isinstance(i, dict)}
    for ident in new:
        key = (ident.get("system"), ident.get("value")) if isinstance(ident, dict) else None
        if key not in seen:
            out.append(ident)
            seen.add(key)
    return out


def _same(stored: dict[str, Any], merged: dict[str, Any]) -> bool:
    skip = ("id", "meta", "resourceType")
    return {k: v for k, v in stored.items() if k not in skip} == {k: v for k, v in merged.items() if k not in skip}


# --- the importer -------------------------------------------------------------------------------
Progress = Callable[[int], None]  # called with the number of lines/entries just handled


class Importer:
    """Imports Bundles and NDJSON through ``UnitOfWork``; see the module docstring."""

    def __init__(self, engine: Engine, *, source: str | None = None, fhir_version: str | None = None,
                 batch_size: int = DEFAULT_BATCH, workers: int | None = None) -> None:
        self.engine = engine
        self.explicit_source = make_source(source) if source else None
        self.declared = detect.normalise_declared(fhir_version)
        self.batch_size = max(1, batch_size)
        self.sqlite = dialect_of(engine) == "sqlite"
        # SQLite: one connection of our own with a write-through cache, checked against
        # PRAGMA data_version at each batch (as the ingest writer does).
        self._conn = engine.raw_connection() if self.sqlite else None
        self._cache = WriterCache(limit=CACHE_LIMIT) if self.sqlite else None
        # NDJSON validation in worker processes (see _run_lines): None = decide per import.
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._parallel = 0  # worker processes for the NDJSON import under way

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Importer":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def _uow(self):  # noqa: ANN202
        return unit_of_work(self.engine, conn=self._conn, cache=self._cache)

    def _worker_count(self, files: list[Path]) -> int:
        """One validating worker beside the writer when there are two CPUs and enough lines
        to repay its start-up; ``workers`` or GATEWAY_IMPORT_WORKERS (0 = none) override."""
        wanted = self.workers
        if wanted is None and os.environ.get("GATEWAY_IMPORT_WORKERS", "").strip().isdigit():
            wanted = int(os.environ["GATEWAY_IMPORT_WORKERS"])
        if wanted is not None:
            return max(0, wanted)
        size = sum(f.stat().st_size * (5 if f.name.endswith(".gz") else 1) for f in files)
        return 1 if (os.cpu_count() or 1) >= 2 and size >= PARALLEL_MIN_BYTES else 0

    def _pool_for(self, _path: Path) -> ProcessPoolExecutor | None:
        if not self._parallel:
            return None
        if self._pool is None:
            # spawn, not fork: the parent holds a SQLite connection and may run threads
            # (a progress bar, a web server's pool); a spawned worker shares neither.
            self._pool = ProcessPoolExecutor(max_workers=self._parallel, initializer=_warm_worker,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    # entry points -------------------------------------------------------------------------------
    def import_path(self, path: Path, progress: Progress | None = None) -> ImportReport:
        shape = detect.shape_of(path)
        if shape.kind == "bundle":
            try:
                document = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise detect.ImportFormatError(f"{path.name} is not valid JSON: {exc}") from None
            report = self.import_bundle(document, name=path.name)
            if progress:
                progress(len(document.get("entry") or []) if isinstance(document, dict) else 1)
            return report
        files = ndjson.files_in(path) if shape.kind == "folder" else [path]
        if not files:
            raise detect.ImportFormatError(f"{path} holds no NDJSON files (*.ndjson, *.jsonl, *.ndjson.gz)")
        origin = path.name if shape.kind == "folder" else path.name.split(".")[0]
        return self.import_ndjson(files, progress, origin=origin)

    def import_bundle(self, bundle: Any, *, name: str = "Bundle") -> ImportReport:
        """All or nothing: every problem is reported, and any problem writes nothing."""
        report = ImportReport()
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            rtype = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
            raise detect.ImportFormatError(f"{name}: a GP record is a Bundle, not {rtype!r}")
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise detect.ImportFormatError(f"{name}: Bundle.entry must be a list")
        resources = [(i, e) for i, e in enumerate(entries) if isinstance(e, dict)
                     and (e.get("search") or {}).get("mode") != "outcome"]
        version = detect.version_of([e.get("resource") for _i, e in resources] + [bundle], self.declared, name)
        report.fhir_versions[version] += 1
        items: list[Item] = []
        for index, entry in enumerate(entries):
            where = f"Bundle.entry[{index}]"
            if not isinstance(entry, dict):
                report.error(Problem(where, "an entry must be a JSON object", [where], "structure"))
                continue
            if (entry.get("search") or {}).get("mode") == "outcome":
                continue
            item = prepare(entry.get("resource"), version, where, report)
            if item is not None:
                item.full_url = entry.get("fullUrl") or None
                items.append(item)
        for problem in report.problems:
            problem.expression = [_prefixed(e, problem.where) for e in problem.expression] or [problem.where]
        source = self.explicit_source or _bundle_source(bundle, items)
        report.source = source.uri
        if report.error_count:
            report.rejected = True
            return report
        try:
            with self._uow() as uow:
                writer = _Writer(uow, source, report)
                for item in items:
                    with _rejections(report, item):
                        writer.settle(item)
                for item in items:
                    with _rejections(report, item):
                        writer.write(item)
                if report.error_count:
                    raise _Abort()
                writer.provenance(f"{name} {bundle.get('id') or ''}".strip())
                run_after_changes(uow)
        except _Abort:
            report.rejected = True
            report.created = report.updated = report.unchanged = report.derived = 0
            report.matches.clear()
        return report

    def import_ndjson(self, files: list[Path], progress: Progress | None = None, *,
                      origin: str = "ndjson") -> ImportReport:
        """Stream lines; commit every ``batch_size``; a bad line is an error, the rest go in.
        A line whose references point forwards (to a later line) is retried at the end."""
        report = ImportReport()
        deferred: dict[Path, set[int]] = {}
        source = self.explicit_source
        self._parallel = self._worker_count(files)
        for path in files:
            version = detect.version_of(_sample(path), self.declared, path.name, tolerant=True)
            report.fhir_versions[version] += 1
            if source is None:
                source = _ndjson_source(path, origin)
                report.source = source.uri
            self._run_lines(path, ndjson.iter_lines(path), version, source, report, deferred, progress)
        for path, numbers in deferred.items():
            version = detect.version_of(_sample(path), self.declared, path.name, tolerant=True)
            wanted = ((n, line) for n, line in ndjson.iter_lines(path) if n in numbers)
            self._run_lines(path, wanted, version, source, report, None, None)
        report.source = source.uri if source else ""
        return report

    def _run_lines(self, path: Path, lines: Iterable[tuple[int, bytes]], version: str, source: Source,
                   report: ImportReport, deferred: dict[Path, set[int]] | None, progress: Progress | None) -> None:
        """Prepare (parse + validate) chunks of ``batch_size`` lines and write each chunk in one
        transaction.  With a worker process, chunk N+1 is validated while chunk N is written;
        at most ``_AHEAD`` chunks are in flight (bounded memory), and they are written in order."""
        chunks = _chunks(lines, self.batch_size)
        pool = self._pool_for(path)
        if pool is None:
            prepared = (_prepare_chunk(path.name, version, chunk) for chunk in chunks)
        else:
            prepared = _pipelined(pool, path.name, version, chunks, _AHEAD + self._parallel - 1)
        for part, items in prepared:
            _merge_prepared(report, part)
            batch = [_item_of(entry) for entry in items]
            if batch:
                self._write_batch(path, batch, source, report, deferred)
            if progress:
                progress(part.lines)

    def _write_batch(self, path: Path, batch: list[Item], source: Source, report: ImportReport,
                     deferred: dict[Path, set[int]] | None) -> None:
        with self._uow() as uow:
            # One statement per table for the batch's new rows, and one identity query per
            # (type, identifier system) instead of one per line: see UnitOfWork.defer_inserts.
            uow.defer_inserts()
            writer = _Writer(uow, source, report)
            writer.prefetch(batch)
            for item in batch:
                line_no = int(item.full_url or 0)
                item.full_url = None
                try:
                    # Identity and references first: they only read, so a line whose reference
                    # names nothing (yet) fails before writing anything.  What is left is one
                    # write, refused (WriteRejected) before any SQL -- except a coded DNA entry,
                    # which may write a derived Appointment after its own version: only that
                    # needs a savepoint (two statements per line that most lines do not need).
                    writer.settle(item)
                    writer.resolve_all(item)
                    if writer.may_derive(item):
                        with uow.savepoint():
                            writer.write(item)
                    else:
                        writer.write(item)
                except Unresolved as exc:
                    writer.local.pop(item.source_key or "", None)
                    if deferred is not None:
                        deferred.setdefault(path, set()).add(line_no)
                    else:
                        report.error(_unresolved_problem(item, exc))
                except WriteRejected as exc:
                    report.error(Problem(item.where, exc.message, exc.expression, "business-rule"))
            writer.provenance(path.name)
            run_after_changes(uow)


# --- preparing NDJSON lines, here or in a worker process ------------------------------------------
_AHEAD = 2  # chunks submitted to the worker beyond the one being written: bounds memory
PARALLEL_MIN_BYTES = 2_000_000  # below this a worker's start-up (~1 s) costs more than it saves


@dataclass(slots=True)
class _Prepared:
    """What preparing one chunk found besides its items (merged into the report in order)."""

    lines: int = 0
    problems: list[Problem] = field(default_factory=list)
    error_count: int = 0
    skipped: int = 0
    skipped_types: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)


# (line number, where, type, source id, body as dict or orjson bytes, notes)
_Entry = tuple[int, str, str, "str | None", "dict[str, Any] | bytes", list[str]]


def _chunks(lines: Iterable[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for entry in lines:
        chunk.append(entry)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _prepare_chunk(name: str, version: str, chunk: list[tuple[int, bytes]],
                   serialise: bool = False) -> tuple[_Prepared, list[_Entry]]:
    """Parse and fully validate (``prepare``) each line of a chunk; no database.  In a worker
    (``serialise``) bodies travel back as orjson bytes: far cheaper to pickle than dicts."""
    report = ImportReport()
    items: list[_Entry] = []
    for number, line in chunk:
        where = f"{name} line {number}"
        try:
            raw = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            report.error(Problem(where, f"not valid JSON: {exc}", code="structure"))
            continue
        item = prepare(raw, version, where, report)
        if item is not None:
            body = orjson.dumps(item.resource) if serialise else item.resource
            items.append((number, where, item.rtype, item.source_id, body, item.notes))
    part = _Prepared(len(chunk), report.problems, report.error_count, report.skipped, report.skipped_types,
                     report.notes)
    return part, items


def _prepare_in_worker(name: str, version: str, chunk: list[tuple[int, bytes]]) -> tuple[_Prepared, list[_Entry]]:
    return _prepare_chunk(name, version, chunk, serialise=True)


def _pipelined(pool: Any, name: str, version: str,
               chunks: Iterator[list[tuple[int, bytes]]], ahead: int) -> Iterator[tuple[_Prepared, list[_Entry]]]:
    """Results in order, keeping the workers ``ahead`` chunks ahead of the writer."""
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.submit(_prepare_in_worker, name, version, chunk))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _merge_prepared(report: ImportReport, part: _Prepared) -> None:
    for problem in part.problems:
        report.error(problem)
    report.error_count += part.error_count - len(part.problems)  # counted, not kept, in the worker
    report.skipped += part.skipped
    report.skipped_types.update(part.skipped_types)
    report.notes.update(part.notes)


def _item_of(entry: _Entry) -> Item:
    number, where, rtype, source_id, body, notes = entry
    resource = orjson.loads(body) if isinstance(body, bytes) else body
    # full_url carries the line number, to find the line again if it is deferred
    return Item(where, rtype, source_id, str(number), resource, notes)


def _warm_worker() -> None:
    """Import the validation stack once per worker, not on its first chunk's clock."""
    import gateway.api.validation  # noqa: F401


class _Abort(Exception):
    pass


class _rejections:
    """Turn one item's refusal (a reference to nothing, a business rule) into a Problem."""

    def __init__(self, report: ImportReport, item: Item) -> None:
        self.report, self.item = report, item

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, _tb: Any) -> bool:
        if isinstance(exc, Unresolved):
            self.report.error(_unresolved_problem(self.item, exc))
            return True
        if isinstance(exc, WriteRejected):
            self.report.error(Problem(self.item.where, exc.message,
                                      [_prefixed(e, self.item.where) for e in exc.expression], "business-rule"))
            return True
        return False


def _unresolved_problem(item: Item, exc: Unresolved) -> Problem:
    bundle = item.where.startswith("Bundle.")
    paths = [_prefixed(p, item.where) if bundle else p for p, _m in exc.problems]
    return Problem(item.where, "; ".join(m for _p, m in exc.problems), paths, "not-found")


def _prefixed(expression: str, where: str) -> str:
    """'Condition.subject' of Bundle.entry[2] -> 'Bundle.entry[2].resource.subject'."""
    if not where.startswith("Bundle.") or expression.startswith("Bundle."):
        return expression
    head, dot, rest = expression.partition(".")
    return f"{where}.resource" + (f".{rest}" if dot else "")


def _sample(path: Path, lines: int = 200) -> Iterator[dict[str, Any]]:
    for count, (_n, line) in enumerate(ndjson.iter_lines(path)):
        if count >= lines:
            return
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            yield value


def _bundle_source(bundle: dict[str, Any], items: list[Item]) -> Source:
    """Bundle.meta.source, else the registered practice (ODS) of the record, else the Bundle's
    own identifier; re-importing the same record must name the same source."""
    meta_source = (bundle.get("meta") or {}).get("source")
    if meta_source:
        return make_source(str(meta_source))
    orgs = {item.source_key: item for item in items if item.rtype == "Organization"}
    patient = next((item for item in items if item.rtype == "Patient"), None)
    candidates = []
    if patient is not None:
        for ref in [patient.resource.get("managingOrganization") or {}] + list(
                patient.resource.get("generalPractitioner") or []):
            key = (ref.get("reference") or "")
            parts = split_reference(key)
            if parts and parts[0] == "Organization":
                candidates.append(orgs.get(f"Organization/{parts[1]}"))
    candidates += list(orgs.values())
    for org in candidates:
        for ident in (org.resource.get("identifier") or []) if org else []:
            if ident.get("system") == codes.ODS_CODE and ident.get("value"):
                return ods_source(str(ident["value"]))
    ident = bundle.get("identifier") or {}
    if ident.get("value"):
        return make_source(f"{ident.get('system', 'urn:bundle')}|{ident['value']}")
    return make_source("urn:gateway:source:unnamed-gp-record")


def _ndjson_source(path: Path, origin: str) -> Source:
    """meta.source of the first line, else the folder (a bulk export) or file name: stable
    across re-imports of the same export; ``--source`` names it explicitly."""
    for resource in _sample(path, 1):
        meta_source = (resource.get("meta") or {}).get("source")
        if meta_source:
            return make_source(str(meta_source))
    return make_source(f"urn:gateway:bulk:{_slug(origin)}")
