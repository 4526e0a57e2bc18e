"""Mutated real-world-shaped messages never crash the mapper, and whatever it would
store is valid FHIR (R4B models): bad input gets an error, never a broken resource."""

from __future__ import annotations

import json
import random
from pathlib import Path

from fhir.resources.R4B import get_fhir_model_class

from gateway.hl7v2.parser import ParseError, parse_message
from gateway.mapping.engine import MappingEngine
from gateway.mapping.model import MappingError

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "tests" / "messages").glob("*.hl7"))
ODD_VALUES = ["", "^^^", "~", "\\", "&&", "X" * 300, "20241301", "ÿ", "^" * 20, " ", "~~~", "^&^&", "|"]
EXTRA_SEGMENTS = ["ZXX|1|foo", "NTE|1||note", "PID|1", "SCH|", "AIS|1", "MRG|", "TQ1|1||||||bad"]


def mutate(rng: random.Random, text: str) -> str:
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    j = rng.randrange(1, len(segments))
    roll = rng.random()
    if roll < 0.3:
        del segments[j]
    elif roll < 0.65:
        fields = segments[j].split("|")
        if len(fields) > 2:
            fields[rng.randrange(1, len(fields))] = rng.choice(ODD_VALUES)
            segments[j] = "|".join(fields)
    elif roll < 0.85:
        segments.insert(j, rng.choice(EXTRA_SEGMENTS))
    else:
        a, b = rng.randrange(1, len(segments)), rng.randrange(1, len(segments))
        segments[a], segments[b] = segments[b], segments[a]
    return "\r".join(segments) + "\r"


def test_mutated_messages_map_to_valid_fhir_or_a_clean_rejection():
    engine = MappingEngine(ROOT / "mappings")
    rng = random.Random(20261126)
    mapped = 0
    for _ in range(1500):
        message = mutate(rng, rng.choice(SAMPLES).read_text())
        try:
            result = engine.map(parse_message(message))
        except (MappingError, ParseError):
            continue
        if result.errors:
            continue
        mapped += 1
        placeholders = {i.full_url: f"{i.resource_type}/r{n}" for n, i in enumerate(result.intents)}
        for intent in result.intents:
            text = json.dumps(intent.resource)
            for url, ref in placeholders.items():
                text = text.replace(url, ref)
            get_fhir_model_class(intent.resource_type).model_validate(json.loads(text))
    assert mapped > 300  # the mutations must leave most messages mappable, or this proves little
