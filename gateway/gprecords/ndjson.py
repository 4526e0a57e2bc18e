"""Streaming NDJSON (FHIR Bulk Data): one resource per line, a file per type or a folder.

Lines are read one at a time from a binary stream, so memory stays flat whatever
the file size; gzip files (``.ndjson.gz``) are read the same way.  A folder is read
file by file in dependency order (Organization, Practitioner ... Patient before
what refers to them), by the type in the file name (``Patient.ndjson``,
``Patient.000.ndjson``, ``Patient-1.ndjson``) or, failing that, its first line.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import IO, Iterator

import orjson

# Referenced types first, so most references point backwards (forward ones are retried).
TYPE_ORDER = ("Organization", "Location", "Practitioner", "PractitionerRole", "HealthcareService", "Device",
              "Endpoint", "Patient", "EpisodeOfCare", "Encounter", "Condition", "ReferralRequest",
              "ServiceRequest", "Appointment", "Observation", "Flag", "CareTeam", "CarePlan", "Task", "Provenance")
_SUFFIXES = (".ndjson", ".jsonl", ".ndjson.gz", ".jsonl.gz")


def open_lines(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb", buffering=1 << 20)


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line; line numbers count from 1 as editors do."""
    with open_lines(path) as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                yield number, line


def count_lines(path: Path) -> int:
    """Lines in a file, for a progress bar (a fast byte count, not a parse)."""
    total = 0
    with open_lines(path) as fh:
        while chunk := fh.read(1 << 20):
            total += chunk.count(b"\n")
    return total


def _type_of_file(path: Path) -> str:
    stem = path.name
    for suffix in _SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name = re.split(r"[.\-_ ]", stem, maxsplit=1)[0]
    if name in TYPE_ORDER:
        return name
    for _number, line in iter_lines(path):
        try:
            return str(orjson.loads(line).get("resourceType", ""))
        except (ValueError, AttributeError):
            return ""
    return ""


def files_in(folder: Path) -> list[Path]:
    """The NDJSON files of a folder, referenced types first."""
    files = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_SUFFIXES)]
    rank = {t: i for i, t in enumerate(TYPE_ORDER)}

    def key(p: Path) -> tuple[int, str]:
        return rank.get(_type_of_file(p), len(rank)), p.name

    return sorted(files, key=key)
