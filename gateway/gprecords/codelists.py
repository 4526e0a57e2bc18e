"""The SNOMED CT code lists the GP-record features read (data in ``mappings/``).

* ``mappings/complex-needs.yaml`` (``GATEWAY_COMPLEX_NEEDS_FILE``): the child markers
  (complex medical needs, child-protection plan, looked-after child, safeguarding
  concern), one list of codes per marker.
* ``mappings/gp-did-not-attend.yaml``: coded "did not attend" entries a GP record
  may hold instead of (or as well as) an Appointment with status noshow.

Loaded once per file version (the file's mtime), so an edited list takes effect
without a restart and a hook never re-reads YAML per write.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import yaml

from gateway import codes
from gateway.settings import current_settings

MARKER_SECTIONS = {
    "complex_medical_needs": codes.FLAG_COMPLEX_NEEDS,
    "child_protection_plan": codes.FLAG_CHILD_PROTECTION_PLAN,
    "looked_after_child": codes.FLAG_LOOKED_AFTER,
    "safeguarding_concern": codes.FLAG_SAFEGUARDING_CONCERN,
}


class CodeListError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class CodeList:
    codes: frozenset[tuple[str, str]]  # (system, code)
    displays: dict[tuple[str, str], str]

    def matches(self, concept: Any) -> tuple[str, str] | None:
        """The first (system, code) of a CodeableConcept (or Coding, or list) in this list."""
        for coding in _codings(concept):
            key = (coding.get("system", ""), str(coding.get("code", "")))
            if key in self.codes:
                return key
        return None


def _codings(concept: Any) -> Iterable[dict[str, Any]]:
    if isinstance(concept, list):
        for item in concept:
            yield from _codings(item)
    elif isinstance(concept, dict):
        if "coding" in concept:
            for coding in concept.get("coding") or ():
                if isinstance(coding, dict):
                    yield coding
        elif "code" in concept:
            yield concept


def _parse_list(items: Any, where: str) -> CodeList:
    found: set[tuple[str, str]] = set()
    displays: dict[tuple[str, str], str] = {}
    for item in items or ():
        if not isinstance(item, dict) or "code" not in item:
            raise CodeListError(f"{where}: each entry needs a code (and optionally system, display)")
        key = (str(item.get("system", codes.SNOMED)), str(item["code"]))
        found.add(key)
        displays[key] = str(item.get("display", ""))
    return CodeList(frozenset(found), displays)


@lru_cache(maxsize=8)
def _load(path: str, _mtime: float) -> dict[str, CodeList]:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return {name: _parse_list(value.get("codes") if isinstance(value, dict) else value, f"{path} {name}")
            for name, value in doc.items() if not name.startswith("_")}


def _lists(path: Path) -> dict[str, CodeList]:
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise CodeListError(f"code list file {path} cannot be read: {exc}") from None
    return _load(str(path), mtime)


def marker_lists() -> dict[str, CodeList]:
    """Marker code (codes.FLAG_*) -> its code list."""
    lists = _lists(current_settings().complex_needs_file)
    return {marker: lists.get(section, CodeList(frozenset(), {})) for section, marker in MARKER_SECTIONS.items()}


def did_not_attend() -> CodeList:
    lists = _lists(current_settings().mappings_dir / "gp-did-not-attend.yaml")
    return lists.get("did_not_attend", CodeList(frozenset(), {}))
