"""Audit trail overhead: records/s appended, and the cost per record on the caller's thread.

    .venv/bin/python bench/audit_overhead.py [--records 50000] [--postgres]

For each index (SQLite in a temporary folder; PostgreSQL in a fresh database
with --postgres) it measures:

- caller: the time ``AuditTrail.record`` takes on the caller's thread
  (median and 99th percentile per call, the writer thread running meanwhile);
- appended: records/s from the first ``record`` until ``flush`` returns
  (queued, batched, hashed, committed);
- record_in: records/s appended one per transaction in the caller's own
  transaction (the synchronous variant);
- verify: records/s ``audit verify`` walks.

Results print as JSON lines. Uses 2 threads at most; wait while
/tmp/BENCH_RUNNING exists (someone else is benchmarking).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samarkiv.access.principal import Principal  # noqa: E402
from samarkiv.audit import AuditEvent, AuditTrail  # noqa: E402
from samarkiv.audit.verify import verify_chain  # noqa: E402
from samarkiv.index.engine import create_index_engine, migrate  # noqa: E402

WHO = Principal(name="Anna Berg", kind="user", org_code="KS", roles=frozenset({"radiologist"}), user_pk=7,
                auth_method="token", address="10.1.2.3")  # fmt: skip


def _event(i: int) -> AuditEvent:
    return AuditEvent("retrieve", WHO, patient_keys=[i % 5000 + 1], study_uid=f"1.2.826.0.1.3680043.2.{i}",
                      count=120, purpose="TREAT", care_relationship=i % 100)  # fmt: skip


def run(url: str, records: int, label: str) -> dict[str, object]:
    engine = create_index_engine(url, writer=url.startswith("sqlite"))
    migrate(engine)
    trail = AuditTrail(engine)
    costs = []
    start = time.perf_counter()
    for i in range(records):
        t0 = time.perf_counter_ns()
        trail.record(_event(i))
        costs.append(time.perf_counter_ns() - t0)
    queued = time.perf_counter()
    trail.flush()
    done = time.perf_counter()
    trail.close()
    n_sync = min(records // 10, 2000)
    t0 = time.perf_counter()
    for i in range(n_sync):
        with engine.begin() as conn:
            trail.record_in(conn, [_event(i)])
    sync = time.perf_counter() - t0
    t0 = time.perf_counter()
    with engine.connect() as conn:
        result = verify_chain(conn)
    verify = time.perf_counter() - t0
    engine.dispose()
    costs.sort()
    return {
        "index": label,
        "records": records,
        "caller_us_median": round(statistics.median(costs) / 1000, 2),
        "caller_us_p99": round(costs[int(len(costs) * 0.99)] / 1000, 2),
        "enqueue_s": round(queued - start, 3),
        "appended_per_s": round(records / (done - start)),
        "record_in_one_per_txn_per_s": round(n_sync / sync),
        "verify_per_s": round(result.records / verify),
        "verify_ok": result.ok,
        "batches": trail.batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--postgres", action="store_true", help="also on PostgreSQL (a fresh database)")
    args = parser.parse_args()
    while Path("/tmp/BENCH_RUNNING").exists():
        time.sleep(30)
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(run(f"sqlite:///{folder}/index.sqlite", args.records, "sqlite")), flush=True)
    if args.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from benchkit.data import create_pg_database, drop_pg_database

        url = create_pg_database()
        try:
            print(json.dumps(run(url, args.records, "postgresql")), flush=True)
        finally:
            drop_pg_database(url)


if __name__ == "__main__":
    main()
