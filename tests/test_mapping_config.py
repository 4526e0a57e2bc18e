"""The mapping data is checked when it is loaded, and per-sender files need no code changes."""

import shutil
from pathlib import Path

import pytest

from gateway.hl7v2.parser import parse_message
from gateway.mapping.engine import MappingConfigError, MappingEngine

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ROOT / "tests" / "messages"


@pytest.fixture()
def mappings(tmp_path: Path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", target)
    return target


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_shipped_mappings_load():
    engine = MappingEngine(ROOT / "mappings")
    assert "SIU^S26" in engine._default.messages


def test_invalid_fhir_code_in_a_csv_fails_at_load(mappings):
    append(mappings / "codes" / "appointment-status.csv", "ARRIVED,here,\n")
    with pytest.raises(MappingConfigError, match="not a valid FHIR code"):
        MappingEngine(mappings)


def test_duplicate_csv_source_fails(mappings):
    append(mappings / "codes" / "administrative-sex.csv", "m,male,\n")
    with pytest.raises(MappingConfigError, match="twice"):
        MappingEngine(mappings)


def test_unknown_converter_fails(mappings):
    append(mappings / "segments" / "pid.yaml", '  - {field: 9, type: "XPN[Nmae]", to: "name[+]"}\n')
    with pytest.raises(MappingConfigError, match="unknown type"):
        MappingEngine(mappings)


def test_misspelt_converter_option_fails(mappings):
    append(mappings / "segments" / "pid.yaml", '  - {field: 9, type: "XPN[HumanName]", to: "name[+]", repaet: all}\n')
    with pytest.raises(MappingConfigError, match="unknown option"):
        MappingEngine(mappings)


def test_bad_event_status_fails(mappings):
    path = mappings / "messages" / "siu.yaml"
    path.write_text(path.read_text().replace("S12: {appointment: {status: {default: booked}}}",
                                             "S12: {appointment: {status: {default: boked}}}"))
    with pytest.raises(MappingConfigError, match="boked"):
        MappingEngine(mappings)


def test_sender_override_with_bad_code_fails(mappings):
    (mappings / "senders" / "typo.yaml").write_text(
        "sender: {match: [{facility: TYPO}]}\ncodes: {appointment-status: {HERE: here}}\n")
    with pytest.raises(MappingConfigError, match="here"):
        MappingEngine(mappings)


def test_two_files_claiming_one_sender_fail(mappings):
    (mappings / "senders" / "dup.yaml").write_text("sender: {match: [{application: RIVERSIDE_PAS}]}\n")
    with pytest.raises(MappingConfigError, match="already claimed"):
        MappingEngine(mappings)


def test_a_new_sender_file_is_data_only(mappings):
    """A facility-level override: NORTHGATE sends BOOKED_OK for booked and a ZNT note segment."""
    (mappings / "senders" / "northgate.yaml").write_text("""
sender:
  name: Northgate PAS
  match: [{facility: NORTHGATE}]
codes:
  appointment-status: {BOOKED_OK: booked}
segments:
  - segment: ZNT
    resource: Appointment
    into: appointment
    fields:
      - {field: 1, type: "ST[string]", to: description}
  - segment: PID
    resource: Patient
    into: patient
    fields:
      - field: 23
        type: "ST[string]"
        to: "extension[+].valueAddress.text"
        with: {url: "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"}
""")
    engine = MappingEngine(mappings)
    text = (MESSAGES / "siu_s12_v23_tq_lf.hl7").read_bytes().decode()
    text = text.replace("|Booked\n", "|BOOKED_OK\n") + "ZNT|Asthma annual review\n"
    pid = next(line for line in text.split("\n") if line.startswith("PID"))
    text = text.replace(pid, pid + "|" * (23 - pid.count("|")) + "Northgate General")
    result = engine.map(parse_message(text))
    assert result.errors == []
    appointment = result.first("Appointment").resource
    assert appointment["status"] == "booked"
    assert appointment["description"] == "Asthma annual review"
    assert len(result.first("Patient").resource["identifier"]) == 2  # PID mapped once, not twice
    assert result.first("Patient").resource["extension"] == [{
        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
        "valueAddress": {"text": "Northgate General"}}]
    # The default profile is untouched: another sender's BOOKED_OK is still unknown.
    other = text.replace("|NORTHGATE|", "|ELSEWHERE|", 1)
    assert [e.code for e in engine.map(parse_message(other)).errors] == [103]


def test_removing_a_rule_removes_the_mapping(mappings):
    """Mappings are data: delete the AIS HealthcareService rule and no HealthcareService is made."""
    path = mappings / "segments" / "ais.yaml"
    text = path.read_text()
    start = text.index("  - field: 3\n    type: \"CWE[HealthcareService]\"")
    end = text.index("  - {field: 4")
    path.write_text(text[:start] + text[end:])
    engine = MappingEngine(mappings)
    result = engine.map(parse_message((MESSAGES / "siu_s12_v251_full.hl7").read_bytes()))
    assert result.first("HealthcareService") is None
    assert result.first("Appointment").resource["serviceType"][0]["coding"][0]["code"] == "PAEDCL"


def test_docs_cover_every_mapped_field():
    """docs/mapping.md is what integration engineers check: every field a segment map reads is in it."""
    import yaml

    docs = (ROOT / "docs" / "mapping.md").read_text()
    missing = []
    for path in sorted((ROOT / "mappings" / "segments").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        for rule in spec["fields"]:
            label = f"{spec['segment']}-{rule['field']}"
            if rule.get("component"):
                label += f".{rule['component']}"
            if label not in docs:
                missing.append(label)
    assert missing == []
