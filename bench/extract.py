"""Micro-benchmark: search-index row extraction alone, compiled plan vs per-parameter.

    python bench/extract.py [--resources 20000] [--messages 4000] [--reps 7]

Times ``indexer.extract`` (parameters compiled per type into one plan) against the
per-parameter reference it replaced (kept in tests/test_indexer_plan.py, which proves
both give the same rows), interleaved, best of ``--reps``, on the bulk GP resources of
bench/import.py and on the FHIR resources the SIU mapping makes from a synthetic feed.
Not a test: figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "gp"))
from generate import lines  # noqa: E402
from test_indexer_plan import reference_extract, resolve, with_meta  # noqa: E402

from gateway.hl7v2.parser import parse_message  # noqa: E402
from gateway.mapping.engine import MappingEngine  # noqa: E402
from gateway.store import indexer  # noqa: E402
from gateway.synthetic import siu_mix  # noqa: E402


def siu_resources(messages: int) -> list[tuple[str, dict]]:
    engine = MappingEngine(ROOT / "mappings")
    out: list[tuple[str, dict]] = []
    for text in siu_mix(200, messages):
        intents = engine.map(parse_message(text.encode())).intents
        ids = {i.full_url: f"{i.resource_type}/s{len(out)}-{n}" for n, i in enumerate(intents)}
        out += [(i.resource_type, with_meta({"resourceType": i.resource_type, **resolve(i.resource, ids)}))
                for i in intents]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=20_000)
    parser.add_argument("--messages", type=int, default=4_000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    corpora = {
        "GP bulk (bench/import.py)": [(r["resourceType"], with_meta(r)) for r in lines(args.resources)],
        f"SIU feed, {args.messages} messages mapped": siu_resources(args.messages),
    }
    for name, items in corpora.items():
        best = {"per-parameter": float("inf"), "compiled": float("inf")}
        for _ in range(args.reps):
            for label, extract in (("per-parameter", reference_extract), ("compiled", indexer.extract)):
                start = time.perf_counter()
                for resource_type, resource in items:
                    extract(resource_type, resource)
                best[label] = min(best[label], time.perf_counter() - start)
        old, new = best["per-parameter"], best["compiled"]
        print(f"{name}: {len(items)} resources: per-parameter {len(items) / old:,.0f}/s, "
              f"compiled {len(items) / new:,.0f}/s, extraction time -{1 - new / old:.0%} (x{old / new:.2f})")


if __name__ == "__main__":
    main()
