"""What an import did: counts, every problem (where + why), and the patient match report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MAX_KEPT_PROBLEMS = 1000  # all are counted; the first this many are kept for the answer


@dataclass(slots=True)
class Problem:
    where: str  # "Bundle.entry[3]" or "Condition.ndjson line 17"
    message: str
    expression: list[str] = field(default_factory=list)
    code: str = "invalid"

    def text(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(slots=True)
class MatchEntry:
    source: str  # the Patient as the source named it ("Patient/2")
    patient: str  # the gateway's Patient ("Patient/<id>")
    outcome: str  # joined | updated | created | not-merged
    reason: str
    nhs_number: str | None


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    error_count: int = 0
    derived: int = 0  # noshow Appointments derived from coded "did not attend" entries
    problems: list[Problem] = field(default_factory=list)
    matches: list[MatchEntry] = field(default_factory=list)
    skipped_types: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    fhir_versions: Counter = field(default_factory=Counter)
    source: str = ""
    rejected: bool = False  # a Bundle refused as a whole: nothing written

    @property
    def imported(self) -> int:
        return self.created + self.updated

    match_counts: Counter = field(default_factory=Counter)

    def add_match(self, entry: MatchEntry) -> None:
        """Every outcome is counted; not-merged ones (which need a person's eyes) are always
        listed, the rest up to MAX_KEPT_PROBLEMS (a region's bulk load has many patients)."""
        self.match_counts[entry.outcome] += 1
        if entry.outcome == "not-merged" or len(self.matches) < MAX_KEPT_PROBLEMS:
            self.matches.append(entry)

    def error(self, problem: Problem) -> None:
        self.error_count += 1
        if len(self.problems) < MAX_KEPT_PROBLEMS:
            self.problems.append(problem)

    def summary(self) -> str:
        text = (f"imported {self.imported} (created {self.created}, updated {self.updated}), unchanged "
                f"{self.unchanged}, skipped {self.skipped}, errors {self.error_count}")
        if self.match_counts:
            text += "; patients " + ", ".join(f"{k} {v}" for k, v in sorted(self.match_counts.items()))
        if self.derived:
            text += f"; {self.derived} noshow Appointment(s) derived from coded did-not-attend entries"
        return text

    # --- as FHIR --------------------------------------------------------------------------------
    def outcome(self) -> dict[str, Any]:
        issues: list[dict[str, Any]] = []
        for p in self.problems:
            issue = {"severity": "error", "code": p.code, "diagnostics": p.text()}
            if p.expression:
                issue["expression"] = p.expression
            issues.append(issue)
        if self.error_count > len(self.problems):
            issues.append({"severity": "error", "code": "too-costly",
                           "diagnostics": f"{self.error_count - len(self.problems)} more errors not listed"})
        for m in self.matches:
            if m.outcome == "not-merged":
                issues.append({"severity": "warning", "code": "informational",
                               "diagnostics": f"{m.source} -> {m.patient}: not merged: {m.reason}"})
        for rtype, n in sorted(self.skipped_types.items()):
            issues.append({"severity": "information", "code": "not-supported",
                           "diagnostics": f"{n} {rtype} resource(s) skipped: the gateway does not keep {rtype}"})
        issues.append({"severity": "information", "code": "informational", "diagnostics": self.summary()})
        return {"resourceType": "OperationOutcome", "issue": issues}

    def parameters(self) -> dict[str, Any]:
        params: list[dict[str, Any]] = [
            {"name": name, "valueInteger": value} for name, value in (
                ("created", self.created), ("updated", self.updated), ("unchanged", self.unchanged),
                ("skipped", self.skipped), ("errors", self.error_count), ("derived-noshow", self.derived))]
        if self.source:
            params.append({"name": "source", "valueUri": self.source})
        for m in self.matches:
            parts = [{"name": "source", "valueString": m.source},
                     {"name": "patient", "valueReference": {"reference": m.patient}},
                     {"name": "outcome", "valueCode": m.outcome}]
            if m.reason:
                parts.append({"name": "reason", "valueString": m.reason})
            if m.nhs_number:
                parts.append({"name": "nhsNumber", "valueString": m.nhs_number})
            params.append({"name": "match", "part": parts})
        params.append({"name": "outcome", "resource": self.outcome()})
        return {"resourceType": "Parameters", "parameter": params}
