"""Every resource mapped from every sample message is valid FHIR (fhir.resources R4B models),
and the transaction Bundle rendering is valid too."""

import importlib
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle

from gateway.hl7v2.parser import parse_message, split_batch
from gateway.mapping.bundle import to_transaction_bundle
from gateway.mapping.engine import MappingEngine
from gateway.mapping.model import MappingResult

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "tests" / "messages").glob("*.hl7"))
BAD_BUT_MAPPED = [ROOT / "tests" / "messages" / "bad" / n for n in ("siu_s12_unknown_status.hl7",
                                                                     "siu_s12_bad_tq1_date.hl7")]


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(ROOT / "mappings")


def resolved(obj, ids: dict[str, str]):
    """Replace urn:uuid references with Type/id, as the store will."""
    if isinstance(obj, dict):
        return {k: (ids.get(v, v) if k == "reference" else resolved(v, ids)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [resolved(v, ids) for v in obj]
    return obj


def validate(result: MappingResult) -> None:
    ids = {i.full_url: f"{i.resource_type}/{n}" for n, i in enumerate(result.intents)}
    for intent in result.intents:
        model = getattr(importlib.import_module(f"fhir.resources.R4B.{intent.resource_type.lower()}"),
                        intent.resource_type)
        model.model_validate(resolved(intent.resource, ids))
        # Every urn:uuid reference points at an intent of the same message.
        text = str(intent.resource)
        for url in ids:
            text = text.replace(url, "")
        assert "urn:uuid:" not in text


def test_there_is_a_good_variety_of_samples():
    names = {p.name.split("_")[0] + "_" + p.name.split("_")[1] for p in SAMPLES}
    assert {"siu_s12", "siu_s13", "siu_s14", "siu_s15", "siu_s17", "siu_s26", "adt_a01", "adt_a04", "adt_a05",
            "adt_a08", "adt_a28", "adt_a31", "adt_a40"} <= names


@pytest.mark.parametrize("path", SAMPLES + BAD_BUT_MAPPED, ids=lambda p: p.name)
def test_every_resource_validates(engine, path):
    for text in split_batch(path.read_bytes()):
        result = engine.map(parse_message(text))
        validate(result)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_good_samples_have_no_errors(engine, path):
    assert engine.map(parse_message(path.read_bytes())).errors == []


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_bundle_validates(engine, path):
    result = engine.map(parse_message(path.read_bytes()))
    bundle = to_transaction_bundle(result)
    ids = {i.full_url: f"{i.resource_type}/{n}" for n, i in enumerate(result.intents)}
    Bundle.model_validate(resolved(bundle, ids))


def test_appointments_always_have_a_participant_with_status(engine):
    for path in SAMPLES:
        result = engine.map(parse_message(path.read_bytes()))
        appointment = result.first("Appointment")
        if appointment is None:
            continue
        assert appointment.resource["participant"]
        assert all(p.get("status") for p in appointment.resource["participant"])
