"""Benchmark: bulk NDJSON import into SQLite, against the parse+validate-only ceiling.

    python bench/import.py [--resources 100000] [--db /tmp/bench-import.db]

Prints, in one run: the rate of just parsing (orjson) and validating (fhir.resources
R4B models) the same lines; the rate of `gateway import` itself (a child process, as
users run it: parse, validate, match, resolve references, write versions + index,
after-change hooks, commit every 500 lines); the ratio; and the importer's peak RSS
(the writer and, summed with it, its validating worker process), sampled every second so
a growing curve would show (it should be flat).  The temporary folder is deleted at the end.
Not a test: figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "gp"))
from generate import write  # noqa: E402


def parse_only(path: Path) -> tuple[int, float]:
    from fhir.resources.R4B import get_fhir_model_class

    start = time.perf_counter()
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            resource = orjson.loads(line)
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            n += 1
    return n, time.perf_counter() - start


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(pid: int) -> int:
    """RSS of a process plus its children (the importer's validation worker)."""
    total = rss_kb(pid)
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_rss_kb(int(child))
    except OSError:
        pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-import-"))
    try:
        run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace) -> None:
    path = write(work / "bulk.ndjson", args.resources)
    db = Path(args.db) if args.db else work / "gateway.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    subprocess.run([sys.executable, "-c", f"from gateway.store.database import migrate; migrate({url!r})"], check=True)

    n, seconds = parse_only(path)
    parse_rate = n / seconds
    print(f"parse+validate only (orjson + fhir.resources R4B): {n} resources in {seconds:.1f} s = {parse_rate:,.0f}/s")

    samples: list[tuple[float, int, int]] = []
    gateway = str(Path(sys.executable).with_name("gateway"))
    start = time.perf_counter()
    proc = subprocess.Popen([gateway, "import", str(path), "--database-url", url, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample() -> None:
        while proc.poll() is None:
            samples.append((time.perf_counter() - start, rss_kb(proc.pid), tree_rss_kb(proc.pid)))
            time.sleep(1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join(2)
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
        raise SystemExit(f"import failed ({proc.returncode})")
    rate = n / seconds
    peak = max((kb for _t, kb, _all in samples), default=0) / 1024
    peak_all = max((kb for _t, _kb, kb in samples), default=0) / 1024
    quarter = [kb / 1024 for _t, kb, _all in samples]
    curve = ", ".join(f"{quarter[int(len(quarter) * f)]:.0f}" for f in (0.25, 0.5, 0.75)) if quarter else "-"
    print(f"gateway import: {n} resources in {seconds:.1f} s = {rate:,.0f}/s (process start and migration "
          f"check included)")
    print(f"ratio import / parse-only: {rate / parse_rate:.0%}")
    print(f"peak RSS {peak:.0f} MB (with its validation worker: {peak_all:.0f} MB); "
          f"RSS at 25/50/75% of the run: {curve} MB")
    print(out.strip())
    print(f"(machine: {os.cpu_count()} CPUs; file {path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
