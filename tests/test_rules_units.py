"""The rules' building blocks: the rules file, which service, who cancelled, who is a child;
the $missed-appointments errors and the on/off switch (through HTTP/MLLP)."""

from __future__ import annotations

import copy
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from conftest import RunningGateway, gateway_settings

from gateway.rules import config
from gateway.rules.facts import add_months, is_child_on, service_of, to_appt
from gateway.settings import REPO_ROOT
from rules_helpers import DIET, NOW, SALT, Timeline, search

RULES_FILE = REPO_ROOT / "profiles" / "safeguarding-rules.yaml"
CFG = config.load(RULES_FILE)


def _data() -> dict:
    return yaml.safe_load(RULES_FILE.read_text())


def test_the_shipped_rules_file_is_valid_and_versioned():
    assert CFG.version
    assert {r.id for r in CFG.rules.values()} == set(config.RULE_KEYS)
    assert CFG.rule("R1-was-not-brought").tag == "R1-was-not-brought|1"
    assert CFG.rule("R1-was-not-brought")["threshold"] == 2
    assert CFG.service_setting("paediatric cardiology", "wnb_threshold", None) == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["rules"].append({"id": "R99-unknown", "version": "1"}), "unknown rule id"),
    (lambda d: d["rules"][0].pop("threshold"), "missing threshold"),
    (lambda d: d["rules"][0].update(threshold="two"), "expected int"),
    (lambda d: d["rules"][0].update(base_priority="URGENT"), "base_priority"),
    (lambda d: d["rules"][0].update(markers=["grumpy"]), "unknown marker"),
    (lambda d: d["rules"][0].pop("version"), "'version' is required"),
    (lambda d: d["rules"].pop(), "rules missing"),
    (lambda d: d["codes"].pop("wnb_statuses"), "codes.wnb_statuses"),
    (lambda d: d["service_overrides"].update(dietetics={"wnb_treshold": 1}), "unknown setting"),
])
def test_a_bad_rules_file_fails_loudly(mutate, message):
    data = copy.deepcopy(_data())
    mutate(data)
    with pytest.raises(config.RulesConfigError, match=message):
        config.parse(data)


def test_an_unreadable_rules_file(tmp_path: Path):
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules: [unclosed")
    with pytest.raises(config.RulesConfigError, match="not valid YAML"):
        config.load(bad)


def test_which_service():
    appt = {"serviceType": [{"coding": [{"code": "SALT", "display": "Speech Therapy"}]}]}
    assert service_of(appt, CFG) == ("speech and language therapy", "speech and language therapy")  # alias
    appt = {"participant": [{"actor": {"reference": "HealthcareService/1", "display": "Dietetics"}}]}
    assert service_of(appt, CFG)[0] == "dietetics"
    appt = {"participant": [{"actor": {"reference": "Location/9", "display": "Mill Lane Surgery"}}]}
    assert service_of(appt, CFG)[0] == "mill lane surgery"
    appt = {"meta": {"source": "urn:hl7v2:RXPAS:RXH"}}
    assert service_of(appt, CFG) == ("source:urn:hl7v2:rxpas:rxh", "appointments from RXPAS (RXH)")


def _appt(status: str, *codes_: str) -> dict:
    return {"id": "a", "status": status, "start": "2025-03-01T10:00:00Z",
            "cancelationReason": {"coding": [{"code": c} for c in codes_]}}


def test_who_cancelled():
    assert to_appt(_appt("cancelled", "pat"), None, CFG).patient_cancelled
    assert to_appt(_appt("cancelled", "pat-mv"), None, CFG).patient_cancelled
    assert to_appt(_appt("cancelled", "CARER"), None, CFG).patient_cancelled
    provider = to_appt(_appt("cancelled", "prov"), None, CFG)
    assert provider.provider_cancelled and not provider.patient_cancelled
    assert to_appt(_appt("cancelled"), None, CFG).provider_cancelled  # no reason: never counted against a family
    discharged = to_appt(_appt("noshow", "prov-dch"), None, CFG)
    assert discharged.discharged and not discharged.carer_reason


def test_who_is_a_child():
    birth = date(2007, 3, 1)
    assert is_child_on(birth, datetime(2025, 2, 28, tzinfo=timezone.utc), 18)
    assert not is_child_on(birth, datetime(2025, 3, 1, tzinfo=timezone.utc), 18)
    assert is_child_on(None, datetime(2025, 3, 1, tzinfo=timezone.utc), 18)
    assert add_months(datetime(2024, 2, 29), 12) == datetime(2025, 2, 28)


def test_missed_appointments_errors(sqlite_gateway):
    with sqlite_gateway.http() as http:
        missing = http.get("/fhir/Patient/nope/$missed-appointments")
        assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
        child = Timeline(sqlite_gateway, 301).missed(1, NOW - timedelta(days=2), DIET)
        child.send()
        pid = child.patient_id(http)
        bad = http.get(f"/fhir/Patient/{pid}/$missed-appointments", params={"since": "2024"})
        assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["since"]
        bad = http.get(f"/fhir/Patient/{pid}/$missed-appointments", params={"as-of": "soon"})
        assert bad.status_code == 400
        ok = http.get(f"/fhir/Patient/{pid}/$missed-appointments")
        assert ok.headers["content-type"].startswith("application/fhir+json")
        from fhir.resources.R4B.parameters import Parameters
        Parameters.model_validate(ok.json())


def test_rules_can_be_switched_off(sqlite_url):
    running = RunningGateway(gateway_settings(sqlite_url, rules_enabled=False)).start()
    try:
        child = Timeline(running, 302).missed(1, NOW - timedelta(days=9), DIET).missed(2, NOW - timedelta(days=2), SALT)
        child.send()
        with running.http() as http:
            assert search(http, "Flag", patient=f"Patient/{child.patient_id(http)}") == []
    finally:
        running.stop()
    from gateway.settings import Settings, use_settings
    use_settings(Settings())  # later tests: rules on again



