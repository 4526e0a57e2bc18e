"""Search benchmark: FHIR searches against a large SQLite store, 32 connections.

    python bench/search.py                                    # 100,000 children, 1,000,000 appointments
    python bench/search.py --children 2000 --appointments 20000 --duration 5   # a quick run
    python bench/search.py --scale                            # 10,000 vs --appointments rows: compare p99

1. Generates the store with a bulk path: ``executemany`` straight into
   ``resources``, ``resource_versions`` and the index tables, the index rows built by
   the write path's own function (``unit_of_work._index_rows`` over
   ``indexer.extract``), so the rows are exactly what ingest would write (checked on
   a sample after loading).  Practitioners, locations, organizations, children,
   appointments (60 % booked, 25 % fulfilled, 15 % noshow) and a Flag for every
   fifth child.
2. Starts a real ``gateway serve`` on it with ``GATEWAY_BENCH_ENDPOINTS=1``.
3. For each search — and ``GET /bench/static``, the same stack answering fixed
   JSON with no database work, as the ceiling — runs ``wrk`` (32 connections,
   paths spread over many children) and prints requests/s, p50, p99 and the ratio
   of requests/s to the ceiling.  Without ``wrk`` an httpx client does the same
   (and itself costs CPU the server then lacks).

Also prints SQLite's EXPLAIN QUERY PLAN for each search's main statement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.store import indexer  # noqa: E402
from gateway.store.database import migrate  # noqa: E402
from gateway.store.unit_of_work import _index_rows, dumps, fhir_instant  # noqa: E402
from gateway.synthetic import FAMILY, GIVEN, SERVICES, nhs_check_digit  # noqa: E402

NHS = "https://fhir.nhs.uk/Id/nhs-number"
BATCH = 5_000

INDEX_INSERT = {
    "idx_token": "INSERT INTO idx_token (res_type, res_id, param, system, code) VALUES (?,?,?,?,?)",
    "idx_string": "INSERT INTO idx_string (res_type, res_id, param, value_norm, value_exact) VALUES (?,?,?,?,?)",
    "idx_date": "INSERT INTO idx_date (res_type, res_id, param, low_us, high_us) VALUES (?,?,?,?,?)",
    "idx_reference": "INSERT INTO idx_reference (res_type, res_id, param, target_type, target_id) VALUES (?,?,?,?,?)",
}


# --- generation --------------------------------------------------------------------------------

class BulkLoader:
    """Writes resources as the unit of work would (version 1, 'create'), in batches."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.now = datetime.now(timezone.utc)
        self.resources: list[tuple] = []
        self.versions: list[tuple] = []
        self.index: dict[str, list[tuple]] = {t: [] for t in INDEX_INSERT}
        self.count = 0

    def add(self, res_type: str, res_id: str, resource: dict) -> None:
        self.now += timedelta(microseconds=1)
        stamp, stamp_us = fhir_instant(self.now), indexer.to_us(self.now)
        content = {"resourceType": res_type, "id": res_id, **resource,
                   "meta": {"versionId": "1", "lastUpdated": stamp}}
        text = dumps(content)
        self.resources.append((res_type, res_id, 1, stamp, stamp_us, False, "", text))
        self.versions.append((res_type, res_id, 1, stamp, stamp_us, False, "create", text))
        for table, rows in _index_rows(res_type, res_id, content).items():
            self.index[table].extend(rows.values())
        self.count += 1
        if len(self.resources) >= BATCH:
            self.flush()

    def flush(self) -> None:
        cur = self.conn.cursor()
        cur.executemany("INSERT INTO resources (res_type, res_id, version_id, last_updated, last_updated_us, "
                        "deleted, source, content) VALUES (?,?,?,?,?,?,?,?)", self.resources)
        cur.executemany("INSERT INTO resource_versions (res_type, res_id, version_id, last_updated, "
                        "last_updated_us, deleted, method, content) VALUES (?,?,?,?,?,?,?,?)", self.versions)
        for table, rows in self.index.items():
            cur.executemany(INDEX_INSERT[table], rows)
            rows.clear()
        self.resources.clear()
        self.versions.clear()


def generate(db_path: Path, children: int, appointments: int, seed: int = 5) -> dict[str, float]:
    started = time.perf_counter()
    migrate(f"sqlite:///{db_path}")
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    # Secondary indexes are dropped for the load and rebuilt once at the end (much
    # faster than maintaining them row by row); the DDL is the migration's own.
    ddl = [row[0] for row in conn.execute("SELECT sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL "
                                          "AND tbl_name IN ('resources','resource_versions','idx_token',"
                                          "'idx_string','idx_date','idx_reference')")]
    for statement in ddl:
        conn.execute("DROP INDEX " + statement.split()[2])
    conn.execute("BEGIN")
    rng = random.Random(seed)
    loader = BulkLoader(conn)
    practitioners, locations, orgs = max(10, children // 200), max(5, children // 1000), 10
    for n in range(orgs):
        loader.add("Organization", f"org{n}", {"name": f"Trust {n}", "identifier": [
            {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": f"R{n:03d}"}]})
    for n in range(practitioners):
        loader.add("Practitioner", f"pr{n}", {"identifier": [{"system": "https://fhir.hl7.org.uk/Id/gmc-number",
                                                               "value": f"G{n:06d}"}],
                                               "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}]})
    for n in range(locations):
        loader.add("Location", f"loc{n}", {"name": f"Clinic {n}", "managingOrganization":
                                           {"reference": f"Organization/org{n % orgs}"}})
    numbers = nhs_numbers(children)
    for n in range(children):
        birth = datetime(2010, 1, 1) + timedelta(days=rng.randrange(12 * 365))
        loader.add("Patient", f"pt{n}", {
            "identifier": [{"system": NHS, "value": numbers[n]},
                           {"system": "https://example.org/mrn", "value": f"RX{100000 + n}"}],
            "name": [{"use": "official", "family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}],
            "gender": rng.choice(("male", "female")), "birthDate": birth.strftime("%Y-%m-%d"),
            "generalPractitioner": [{"reference": f"Practitioner/pr{n % practitioners}"}],
            "managingOrganization": {"reference": f"Organization/org{n % orgs}"}})
        if n % 5 == 0:
            loader.add("Flag", f"fl{n}", {
                "status": "active" if n % 10 == 0 else "inactive", "subject": {"reference": f"Patient/pt{n}"},
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category",
                                          "code": "safety"}]}],
                "code": {"text": "Repeated missed appointments"},
                "author": {"reference": f"Organization/org{n % orgs}"},
                "period": {"start": "2025-06-01"}})
    start0 = datetime(2024, 1, 1, 8, tzinfo=timezone.utc)
    for n in range(appointments):
        child = n % children
        roll = rng.random()
        status = "booked" if roll < 0.60 else "fulfilled" if roll < 0.85 else "noshow"
        code, display = SERVICES[n % len(SERVICES)]
        start = start0 + timedelta(minutes=15 * rng.randrange(3 * 365 * 40))
        loader.add("Appointment", f"ap{n}", {
            "identifier": [{"system": "https://example.org/pas-appointment", "value": f"SCH{n}"}],
            "status": status,
            "serviceType": [{"coding": [{"system": "https://example.org/service", "code": code, "display": display}],
                             "text": display}],
            "start": start.isoformat().replace("+00:00", "Z"),
            "end": (start + timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
            "participant": [
                {"actor": {"reference": f"Patient/pt{child}"}, "status": "accepted"},
                {"actor": {"reference": f"Practitioner/pr{child % practitioners}"}, "status": "accepted"},
                {"actor": {"reference": f"Location/loc{n % locations}"}, "status": "accepted"}]})
    loader.flush()
    conn.execute("COMMIT")
    loaded = time.perf_counter()
    for statement in ddl:
        conn.execute(statement)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _verify_sample(conn)
    conn.close()
    return {"resources": loader.count, "load_s": round(loaded - started, 1),
            "index_build_s": round(time.perf_counter() - loaded, 1)}


def _verify_sample(conn: sqlite3.Connection) -> None:
    """The stored index rows of a few resources are exactly what the write path computes."""
    for res_type, res_id, content in conn.execute("SELECT res_type, res_id, content FROM resources "
                                                  "WHERE res_id IN ('pt0', 'ap1', 'fl0', 'loc1')"):
        expected = _index_rows(res_type, res_id, json.loads(content))
        for table in INDEX_INSERT:
            cols = {"idx_token": "system, code", "idx_string": "value_norm, value_exact",
                    "idx_date": "low_us, high_us", "idx_reference": "target_type, target_id"}[table]
            got = set(conn.execute(f"SELECT res_type, res_id, param, {cols} FROM {table} WHERE res_type=? AND "
                                   f"res_id=?", (res_type, res_id)))
            assert got == set(expected[table].values()), (res_type, res_id, table)


# --- load --------------------------------------------------------------------------------------

def nhs_numbers(count: int) -> list[str]:
    """``count`` distinct valid NHS numbers from the 999 test range, in order."""
    out: list[str] = []
    candidate = 0
    while len(out) < count:
        first9 = f"999{candidate:06d}"
        check = nhs_check_digit(first9)
        if check is not None:
            out.append(first9 + str(check))
        candidate += 1
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gateway(db_path: Path) -> tuple[subprocess.Popen, int]:
    http_port, mllp_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_DATABASE_URL": f"sqlite:///{db_path}", "GATEWAY_HTTP_PORT": str(http_port),
           "GATEWAY_MLLP_PORT": str(mllp_port), "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_BENCH_ENDPOINTS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", http_port), timeout=0.5).close()
            return proc, http_port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("gateway did not start")


def scenarios(children: int, sample: int = 2000) -> dict[str, list[str]]:
    rng = random.Random(9)
    picks = [rng.randrange(children) for _ in range(sample)]
    numbers = nhs_numbers(children)
    return {
        "static ceiling": ["/bench/static"],
        "Appointment?patient.identifier&status=noshow": [
            f"/fhir/Appointment?patient.identifier={NHS}%7C{numbers[n]}&status=noshow" for n in picks],
        "Patient?identifier": [f"/fhir/Patient?identifier={NHS}%7C{numbers[n]}" for n in picks],
        "Flag?patient&status=active": [f"/fhir/Flag?patient=Patient/pt{n - n % 10}&status=active" for n in picks],
        "Patient/$everything": [f"/fhir/Patient/pt{n}/$everything" for n in picks],
    }


def check_answers(port: int, children: int) -> None:
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        for name, paths in scenarios(children, 5).items():
            for path in paths:
                response = http.get(path)
                assert response.status_code == 200, (path, response.text[:300])
        bundle = http.get(f"/fhir/Patient?identifier={NHS}|{nhs_numbers(1)[0]}").json()
        assert bundle["total"] == 1, bundle
        everything = http.get("/fhir/Patient/pt0/$everything").json()
        assert everything["total"] > 3, everything.get("total")


def query_plans(db_path: Path, children: int) -> dict[str, list[str]]:
    """EXPLAIN QUERY PLAN of each search's page query, built by the search module itself."""
    from gateway.store.search import _where, parse
    from gateway.store.unit_of_work import UnitOfWork

    conn = sqlite3.connect(db_path)
    uow = UnitOfWork(conn, "sqlite")
    plans = {}
    queries = {
        "Appointment?patient.identifier&status=noshow": ("Appointment", [
            ("patient.identifier", f"{NHS}|{nhs_numbers(2)[1]}"), ("status", "noshow")]),
        "Patient?identifier": ("Patient", [("identifier", f"{NHS}|{nhs_numbers(2)[1]}")]),
        "Flag?patient&status=active": ("Flag", [("patient", "Patient/pt0"), ("status", "active")]),
    }
    for name, (rtype, query) in queries.items():
        where, args = _where(parse(uow, rtype, query), "sqlite")
        sql = f"SELECT r.res_id, r.content FROM resources r WHERE {' AND '.join(where)} ORDER BY r.res_id LIMIT 51"
        plans[name] = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
    conn.close()
    return plans


WRK_SCRIPT = """
local counter = 0
setup = function(thread) counter = counter + 1; thread:set("id", counter) end
local paths = {}
local i = 0
init = function(args)
  for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
  i = (id * 7919) % #paths
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def run_wrk(port: int, paths: list[str], connections: int, duration: int, tmp: Path) -> dict[str, float]:
    paths_file, script = tmp / "paths.txt", tmp / "paths.lua"
    paths_file.write_text("\n".join(paths) + "\n")
    script.write_text(WRK_SCRIPT)
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "30s",
                          "-s", str(script), f"http://127.0.0.1:{port}"],
                         env={**os.environ, "BENCH_PATHS": str(paths_file)}, capture_output=True, text=True,
                         check=True).stdout
    figures = {"req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        figures[f"p{pct}_ms"] = float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["errors"] = int(errors.group(1)) if errors else 0
    return figures


def run_httpx(port: int, paths: list[str], connections: int, duration: int) -> dict[str, float]:
    import httpx

    async def drive() -> tuple[int, list[float], int]:
        latencies: list[float] = []
        errors = 0
        stop = time.perf_counter() + duration
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
            async def worker(k: int) -> None:
                nonlocal errors
                i = k * 97
                while time.perf_counter() < stop:
                    i = (i + 1) % len(paths)
                    t0 = time.perf_counter()
                    response = await client.get(paths[i])
                    latencies.append(time.perf_counter() - t0)
                    errors += response.status_code != 200
            await asyncio.gather(*(worker(k) for k in range(connections)))
        return len(latencies), latencies, errors

    count, latencies, errors = asyncio.run(drive())
    latencies.sort()
    return {"req_per_s": count / duration, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000, "errors": errors}


def bench(db_path: Path, children: int, args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, float]]:
    proc, port = start_gateway(db_path)
    results: dict[str, dict[str, float]] = {}
    try:
        check_answers(port, children)
        for name, paths in scenarios(children).items():
            if shutil.which("wrk") and not args.httpx:
                run_wrk(port, paths, args.connections, 2, tmp)  # warm-up
                results[name] = run_wrk(port, paths, args.connections, args.duration, tmp)
            else:
                results[name] = run_httpx(port, paths, args.connections, args.duration)
    finally:
        proc.terminate()
        proc.wait(60)
    ceiling = results["static ceiling"]["req_per_s"]
    for figures in results.values():
        figures["ratio_to_ceiling"] = figures["req_per_s"] / ceiling
    return results


def print_table(title: str, results: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'search':48s} {'req/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} {'÷ ceiling':>10s} {'errors':>7s}")
    for name, f in results.items():
        print(f"{name:48s} {f['req_per_s']:9.0f} {f['p50_ms']:9.1f} {f['p99_ms']:9.1f} "
              f"{f['ratio_to_ceiling']:10.2f} {int(f['errors']):7d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=100_000)
    parser.add_argument("--appointments", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=15, help="seconds per search")
    parser.add_argument("--scale", action="store_true",
                        help="also run at 10,000 appointments (1,000 children) and compare p99")
    parser.add_argument("--db", help="keep the generated database here (reused if it exists)")
    parser.add_argument("--httpx", action="store_true", help="use the httpx client even if wrk is installed")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    sizes = [(args.children, args.appointments)]
    if args.scale:
        sizes.insert(0, (1_000, 10_000))
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for children, appointments in sizes:
            db_path = Path(args.db) if args.db and (children, appointments) == sizes[-1] else \
                tmp / f"search-{appointments}.db"
            if db_path.exists():
                gen = {"reused": str(db_path)}
            else:
                gen = generate(db_path, children, appointments)
            label = f"{children:,} children, {appointments:,} appointments"
            print(f"\n== {label}: generation {gen}")
            for name, plan in query_plans(db_path, children).items():
                print(f"  plan {name}: " + " | ".join(plan))
            results = bench(db_path, children, args, tmp)
            print_table(label, results)
            report[label] = {"generation": gen, "results": results}
    if args.scale:
        small, large = (report[k]["results"] for k in report)  # type: ignore[index]
        print("\np99 ratio, large ÷ small store:")
        for name in small:
            print(f"  {name:48s} {large[name]['p99_ms'] / max(small[name]['p99_ms'], 1e-9):6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
