"""What was sent: a Bundle or NDJSON (a file or a folder), and which FHIR version.

GP systems send FHIR STU3 (GP Connect) or R4 (UK Core), rarely saying which.  The
version is read from evidence, most decisive first: a declared version (CLI
``--fhir-version``, a ``fhirVersion`` MIME parameter); STU3 or R4 profiles in
``meta.profile``; resource types that exist in one version only; element shapes
that changed (Condition.clinicalStatus a code in STU3, a CodeableConcept in R4).
Evidence of two versions in one file, or of a version the gateway does not read
(DSTU2, R5), is an error before anything is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

STU3, R4 = "STU3", "R4"

_DECLARED = {
    "3.0": STU3, "3.0.0": STU3, "3.0.1": STU3, "3.0.2": STU3, "stu3": STU3, "r3": STU3,
    "4.0": R4, "4.0.0": R4, "4.0.1": R4, "r4": R4, "4.3": R4, "4.3.0": R4, "r4b": R4,
    "1.0.2": "DSTU2", "1.0": "DSTU2", "dstu2": "DSTU2", "5.0": "R5", "5.0.0": "R5", "r5": "R5",
}
STU3_ONLY_TYPES = frozenset((
    "ReferralRequest", "ProcedureRequest", "ProcessRequest", "ProcessResponse", "EligibilityRequest",
    "EligibilityResponse", "EnrollmentRequest", "BodySite", "DataElement", "DeviceComponent",
    "ImagingManifest", "Sequence", "ServiceDefinition", "ExpansionProfile"))
R4_ONLY_TYPES = frozenset((
    "ServiceRequest", "MedicationKnowledge", "CoverageEligibilityRequest", "CoverageEligibilityResponse",
    "InsurancePlan", "Invoice", "ChargeItemDefinition", "BiologicallyDerivedProduct", "ObservationDefinition",
    "SpecimenDefinition", "TerminologyCapabilities", "MolecularSequence", "RiskEvidenceSynthesis",
    "EffectEvidenceSynthesis", "VerificationResult", "SubstanceSpecification"))
DSTU2_ONLY_TYPES = frozenset(("Conformance", "MedicationOrder", "DiagnosticOrder", "Order", "OrderResponse",
                              "DeviceUseRequest"))
R5_ONLY_TYPES = frozenset(("ActorDefinition", "Requirements", "InventoryItem", "Transport", "GenomicStudy",
                           "FormularyItem", "ArtifactAssessment", "NutritionIntake", "DeviceDispense",
                           "InventoryReport", "ImagingSelection", "Permission", "ConditionDefinition"))


class ImportFormatError(ValueError):
    """The input cannot be imported as a whole (wrong version, not FHIR, mixed versions)."""


@dataclass(frozen=True, slots=True)
class Shape:
    kind: str  # bundle | ndjson | folder
    path: Path


def normalise_declared(version: str | None) -> str | None:
    """'3.0.1' / 'STU3' -> 'STU3'; '4.0.1' / 'R4' -> 'R4'; unsupported -> error; None -> None."""
    if not version:
        return None
    found = _DECLARED.get(version.strip().lower())
    if found is None:
        raise ImportFormatError(f"FHIR version {version!r} is not known; the gateway reads STU3 (3.0.x) and R4 (4.0.x)")
    if found not in (STU3, R4):
        raise ImportFormatError(f"FHIR version {version} ({found}) is not supported; send STU3 (3.0.x, GP Connect) "
                                f"or R4 (4.0.x)")
    return found


def signals(resource: dict[str, Any]) -> set[str]:
    """The FHIR versions one resource's shape points to (empty: it fits both)."""
    found: set[str] = set()
    rtype = resource.get("resourceType")
    if rtype in STU3_ONLY_TYPES:
        found.add(STU3)
    elif rtype in R4_ONLY_TYPES:
        found.add(R4)
    elif rtype in DSTU2_ONLY_TYPES:
        found.add("DSTU2")
    elif rtype in R5_ONLY_TYPES:
        found.add("R5")
    for profile in (resource.get("meta") or {}).get("profile") or ():
        if not isinstance(profile, str):
            continue
        if "/STU3/" in profile or "CareConnect-" in profile or "GPConnect-" in profile:
            found.add(STU3)
        elif "UKCore-" in profile or "/R4/" in profile:
            found.add(R4)
    if rtype in ("Condition", "AllergyIntolerance"):
        status = resource.get("clinicalStatus")
        if isinstance(status, str):
            found.add(STU3)
        elif isinstance(status, dict):
            found.add(R4)
    if rtype == "Condition" and ("assertedDate" in resource or "context" in resource):
        found.add(STU3)
    if rtype == "Observation":
        if "context" in resource or "comment" in resource or "related" in resource:
            found.add(STU3)
        if isinstance(resource.get("interpretation"), list):
            found.add(R4)
    if rtype == "Flag" and isinstance(resource.get("category"), dict):
        found.add(STU3)
    if rtype == "Appointment":
        if "incomingReferral" in resource or "reason" in resource or "indication" in resource:
            found.add(STU3)
        if isinstance(resource.get("serviceCategory"), dict):
            found.add(STU3)
        if "reasonCode" in resource or "basedOn" in resource:
            found.add(R4)
    if rtype == "Encounter":
        if isinstance(resource.get("class"), list):
            found.add("R5")
        if "reason" in resource or "incomingReferral" in resource or isinstance(resource.get("appointment"), dict):
            found.add(STU3)
        if "reasonCode" in resource or isinstance(resource.get("appointment"), list):
            found.add(R4)
    if rtype == "MedicationStatement" and "taken" in resource:
        found.add(STU3)
    if rtype == "Patient" and "animal" in resource:
        found.add(STU3)
    return found


def decide_version(evidence: Counter, declared: str | None, where: str, *, tolerant: bool = False) -> str:
    """One version from the evidence and what was declared, or ImportFormatError.

    ``tolerant`` (NDJSON, judged on a sample of lines): a clear majority (9 in 10
    signs) decides, and the odd line of the other version fails its own validation
    (reported with its line number) instead of failing the whole file."""
    declared = normalise_declared(declared)
    if tolerant and evidence[STU3] and evidence[R4]:
        major, minor = (STU3, R4) if evidence[STU3] > evidence[R4] else (R4, STU3)
        if evidence[major] >= 9 * evidence[minor]:
            evidence = Counter({k: v for k, v in evidence.items() if k != minor})
    other = sorted(v for v in evidence if v not in (STU3, R4))
    if other:
        raise ImportFormatError(f"{where} looks like FHIR {other[0]} (e.g. resource types or elements of that "
                                f"version); the gateway reads STU3 (3.0.x) and R4 (4.0.x)")
    seen = sorted(v for v in evidence if v in (STU3, R4))
    if len(seen) > 1:
        raise ImportFormatError(f"{where} mixes FHIR STU3 and R4 content ({evidence[STU3]} STU3-only and "
                                f"{evidence[R4]} R4-only signs); send one version per file")
    if declared and seen and seen[0] != declared:
        raise ImportFormatError(f"{where} was declared FHIR {declared} but its content is {seen[0]}")
    return declared or (seen[0] if seen else R4)


def version_of(resources: Iterable[dict[str, Any]], declared: str | None, where: str, *,
               tolerant: bool = False) -> str:
    evidence: Counter = Counter()
    for resource in resources:
        if isinstance(resource, dict):
            evidence.update(signals(resource))
    return decide_version(evidence, declared, where, tolerant=tolerant)


def shape_of(path: Path) -> Shape:
    """A folder of NDJSON files, an NDJSON file, or one JSON document (a Bundle)."""
    if path.is_dir():
        return Shape("folder", path)
    name = path.name.lower()
    if name.endswith((".ndjson", ".jsonl", ".ndjson.gz", ".jsonl.gz")):
        return Shape("ndjson", path)
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    text = head.lstrip()
    if not text.startswith(b"{"):
        raise ImportFormatError(f"{path.name}: not FHIR JSON (a Bundle or NDJSON) — it starts with {text[:20]!r}")
    # NDJSON: the first line is a whole object and another object follows on the next line.
    first, newline, rest = text.partition(b"\n")
    if newline and first.rstrip().endswith(b"}") and rest.lstrip().startswith(b"{"):
        try:
            import orjson

            orjson.loads(first)
            return Shape("ndjson", path)
        except ValueError:
            pass
    return Shape("bundle", path)
