"""The versioned rules file (profiles/safeguarding-rules.yaml): load, validate, look up.

Thresholds are data so a safeguarding board can tune them without a code change;
every Flag/Task records the id and version of the rule that raised it.  A bad
file fails loudly at load (a rule silently running with a default would be worse).
"""

from __future__ import annotations

import fnmatch
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway import codes

PRIORITIES = ("PN", "PL", "PM", "PH")  # http://hl7.org/fhir/flag-priority-code, lowest first

# Every rule id the engine implements, and the keys (with types) each may set.
RULE_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "R1-was-not-brought": {"flag_code": str, "threshold": int, "window_months": int, "marked_threshold": int,
                           "markers": list, "base_priority": str},
    "R1-disguised-non-engagement": {"flag_code": str, "threshold": int, "window_months": int,
                                    "base_priority": str},
    "R2-liaison": {"task_code": str, "copy_to_gp": bool},
    "R4-discharge-after-wnb": {"flag_code": str, "task_code": str, "wnb_lookback_months": int,
                               "base_priority": str},
    "R5-wnb-enquiry": {"task_code": str},
    "R6-coordinate-appointments": {"task_code": str, "threshold": int, "min_services": int, "window_days": int,
                                   "upcoming_only": bool},
    "R7-drift": {"drift_days": (int, float), "max_level": int},
    "R8-no-integrated-care-plan": {"flag_code": str, "task_code": str, "min_services": int,
                                   "window_months": int, "markers": list, "base_priority": str},
}
_COMMON = {"id", "version", "recommendation"}
_SERVICE_KEYS = {"wnb_threshold": int, "drift_days": (int, float), "ignore": bool}


class RulesConfigError(ValueError):
    """The rules file is missing, malformed or names something unknown."""


@dataclass(frozen=True)
class Rule:
    id: str
    version: str
    params: dict[str, Any]

    @property
    def tag(self) -> str:
        """What the raised-by-rule extension holds: ``id|version``."""
        return f"{self.id}|{self.version}"

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


@dataclass(frozen=True)
class RulesConfig:
    version: str
    child_age_under: int
    rules: dict[str, Rule]
    wnb_statuses: frozenset[str]
    cancelled_statuses: frozenset[str]
    booked_statuses: frozenset[str]
    patient_cancellation_codes: tuple[str, ...]
    discharge_codes: frozenset[str]
    closure_non_attendance_codes: frozenset[str]
    service_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    service_aliases: dict[str, str] = field(default_factory=dict)

    def rule(self, rule_id: str) -> Rule:
        return self.rules[rule_id]

    def is_patient_cancellation(self, code: str) -> bool:
        low = code.lower()
        return any(fnmatch.fnmatchcase(low, pattern) for pattern in self.patient_cancellation_codes)

    def service_setting(self, service_key: str, key: str, default: Any) -> Any:
        return self.service_overrides.get(service_key, {}).get(key, default)

    def canonical_service(self, name: str) -> str:
        key = " ".join(name.lower().split())
        return self.service_aliases.get(key, key)


def _check_type(value: Any, kind: type | tuple[type, ...], where: str) -> None:
    if isinstance(value, bool) and kind in (int, (int, float)):
        raise RulesConfigError(f"{where}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        raise RulesConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def parse(data: Any, source: str = "rules file") -> RulesConfig:
    if not isinstance(data, dict):
        raise RulesConfigError(f"{source}: the top level must be a mapping")
    if not data.get("version"):
        raise RulesConfigError(f"{source}: 'version' is required")
    code_lists = data.get("codes") or {}
    needed = ("wnb_statuses", "cancelled_statuses", "booked_statuses", "patient_cancellation_codes",
              "discharge_codes", "closure_non_attendance_codes")
    for name in needed:
        if not isinstance(code_lists.get(name), list) or not code_lists[name]:
            raise RulesConfigError(f"{source}: codes.{name} must be a non-empty list")
    rules: dict[str, Rule] = {}
    for n, spec in enumerate(data.get("rules") or []):
        where = f"{source}: rules[{n}]"
        if not isinstance(spec, dict) or "id" not in spec:
            raise RulesConfigError(f"{where}: each rule needs an 'id'")
        rid = spec["id"]
        if rid not in RULE_KEYS:
            raise RulesConfigError(f"{where}: unknown rule id {rid!r} (known: {', '.join(RULE_KEYS)})")
        if rid in rules:
            raise RulesConfigError(f"{where}: rule {rid} is defined twice")
        if not spec.get("version"):
            raise RulesConfigError(f"{where} ({rid}): 'version' is required")
        allowed = RULE_KEYS[rid]
        params = {k: v for k, v in spec.items() if k not in _COMMON}
        for key, value in params.items():
            if key not in allowed:
                raise RulesConfigError(f"{where} ({rid}): unknown setting {key!r}")
            _check_type(value, allowed[key], f"{where} ({rid}).{key}")
        missing = set(allowed) - set(params)
        if missing:
            raise RulesConfigError(f"{where} ({rid}): missing {', '.join(sorted(missing))}")
        for key in ("base_priority",):
            if key in params and params[key] not in PRIORITIES:
                raise RulesConfigError(f"{where} ({rid}).{key}: one of {', '.join(PRIORITIES)}")
        for key in ("markers",):
            for marker in params.get(key, ()):
                if marker not in codes.MARKER_FLAGS:
                    raise RulesConfigError(f"{where} ({rid}).markers: unknown marker {marker!r}")
        for key in ("flag_code",):
            if key in params and params[key] not in _flag_codes():
                raise RulesConfigError(f"{where} ({rid}).flag_code: {params[key]!r} is not a product Flag code")
        for key, value in params.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise RulesConfigError(f"{where} ({rid}).{key}: must not be negative")
        rules[rid] = Rule(rid, str(spec["version"]), params)
    missing_rules = set(RULE_KEYS) - set(rules)
    if missing_rules:
        raise RulesConfigError(f"{source}: rules missing: {', '.join(sorted(missing_rules))}")
    overrides: dict[str, dict[str, Any]] = {}
    for name, settings in (data.get("service_overrides") or {}).items():
        if not isinstance(settings, dict):
            raise RulesConfigError(f"{source}: service_overrides.{name} must be a mapping")
        for key, value in settings.items():
            if key not in _SERVICE_KEYS:
                raise RulesConfigError(f"{source}: service_overrides.{name}: unknown setting {key!r}")
            _check_type(value, _SERVICE_KEYS[key], f"{source}: service_overrides.{name}.{key}")
        overrides[" ".join(str(name).lower().split())] = dict(settings)
    aliases = {" ".join(str(k).lower().split()): " ".join(str(v).lower().split())
               for k, v in (data.get("service_aliases") or {}).items()}
    age = data.get("child_age_under", 18)
    _check_type(age, int, f"{source}: child_age_under")
    return RulesConfig(
        version=str(data["version"]), child_age_under=age, rules=rules,
        wnb_statuses=frozenset(code_lists["wnb_statuses"]),
        cancelled_statuses=frozenset(code_lists["cancelled_statuses"]),
        booked_statuses=frozenset(code_lists["booked_statuses"]),
        patient_cancellation_codes=tuple(str(c).lower() for c in code_lists["patient_cancellation_codes"]),
        discharge_codes=frozenset(str(c).lower() for c in code_lists["discharge_codes"]),
        closure_non_attendance_codes=frozenset(str(c).lower() for c in code_lists["closure_non_attendance_codes"]),
        service_overrides=overrides, service_aliases=aliases)


def _flag_codes() -> set[str]:
    return {codes.FLAG_WNB, codes.FLAG_DISGUISED_NON_ENGAGEMENT, codes.FLAG_DISCHARGED_AFTER_WNB,
            codes.FLAG_NO_CARE_PLAN}


def load(path: Path) -> RulesConfig:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RulesConfigError(f"cannot read the rules file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise RulesConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse(data, str(path))


_cache: dict[tuple[str, float], RulesConfig] = {}
_lock = threading.Lock()
_checked: dict[str, tuple[float, RulesConfig]] = {}  # path -> (monotonic time of last stat, config)
RECHECK_SECONDS = 2.0  # a hook runs per message: stat the file at most this often


def current(path: Path | None = None) -> RulesConfig:
    """The rules in force (settings.rules_file), re-read when the file changes."""
    if path is None:
        from gateway.settings import current_settings

        path = current_settings().rules_file
    path = Path(path)
    recent = _checked.get(str(path))
    now = time.monotonic()
    if recent is not None and now - recent[0] < RECHECK_SECONDS:
        return recent[1]
    try:
        stamp = path.stat().st_mtime
    except OSError as exc:
        raise RulesConfigError(f"cannot read the rules file {path}: {exc}") from exc
    key = (str(path), stamp)
    found = _cache.get(key)
    if found is None:
        with _lock:
            found = _cache.get(key)
            if found is None:
                found = load(path)
                _cache.clear()
                _cache[key] = found
    _checked[str(path)] = (now, found)
    return found
