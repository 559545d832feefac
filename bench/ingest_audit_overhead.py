"""Ingest with and without the access door's work: the C-STORE audit (issue 5, "ingest rate
drops by no more than 10%").

    .venv/bin/python bench/ingest_audit_overhead.py [--instances 1000] [--per-study 10] [--rounds 5]

Runs samarkiv's DICOM listener in this process (SQLite index, a temporary data folder, a
regional configuration: the sender's AE title is its organisation's, as access control
needs), and sends fresh CT_small copies with DCMTK's storescu over one association,
alternating rounds with the audit on (as shipped: one ``store`` record per study and
association, samarkiv/dimse/store.py) and off (``StoreAudit.note`` replaced by a no-op
for the round). The sender's admission by calling AE title happens at association time in
both. Reports instances/s and the process's CPU per instance (median over rounds) and the
drop; prints JSON and writes bench/results/ingest_audit_overhead-<stamp>.json. Touches
/tmp/BENCH_RUNNING while it runs (waits while another bench holds it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchkit import data as bdata  # noqa: E402
from benchkit.dicom import send  # noqa: E402
from benchkit.servers import free_port  # noqa: E402
from benchkit.flag import bench_flag  # noqa: E402

from samarkiv.config import load_settings  # noqa: E402
from samarkiv.core.archive import Archive  # noqa: E402
from samarkiv.dimse import store as dimse_store  # noqa: E402
from samarkiv.dimse.server import DicomServer  # noqa: E402

CONFIG = """
accept_unknown_aets = false
[[organisations]]
code = "KS"
name = "Karolinska"
issuer_of_patient_id = "KS"
aets = ["BENCHSCU"]
"""


def _audit_records(archive: Archive) -> int:
    from sqlalchemy import func, select

    from samarkiv.index.audit_schema import audit_events

    archive.audit.flush(30)
    with archive.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_events).where(audit_events.c.action == "store")).scalar_one())


def run(instances: int, per_study: int, rounds: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="ingest-audit-"))
    config = work / "samarkiv.toml"
    config.write_text(CONFIG)
    port = free_port()
    settings = load_settings(config, data=work / "data", dicom_port=port, host="127.0.0.1")
    archive = Archive(settings)
    server = DicomServer(archive)
    server.start()
    note = dimse_store.StoreAudit.note
    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    try:
        warm = bdata.make_files(work / "warm", label="WARM", studies=2, per_study=per_study)
        send(settings.aet, port, [warm.files])
        for r in range(rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                files = bdata.make_files(work / f"files-{r}-{mode}", label=f"R{r}{mode}", studies=instances // per_study,
                                         per_study=per_study)  # fmt: skip
                dimse_store.StoreAudit.note = note if mode == "on" else (lambda self, result: None)  # type: ignore[method-assign]
                before = _audit_records(archive)
                cpu = time.process_time()
                seconds = send(settings.aet, port, [files.files])
                cpu = time.process_time() - cpu
                records = _audit_records(archive) - before
                dimse_store.StoreAudit.note = note  # type: ignore[method-assign]
                results[mode].append({"rate": instances / seconds, "cpu_ms": cpu * 1000 / instances, "records": records})
                print(f"round {r + 1}/{rounds} audit {mode}: {instances / seconds:.1f} instances/s, "
                      f"CPU {cpu * 1000 / instances:.2f} ms/instance, {records} store records", file=sys.stderr)  # fmt: skip
    finally:
        dimse_store.StoreAudit.note = note  # type: ignore[method-assign]
        server.stop(5)
        archive.close()
    summary = {mode: {"instances_per_s": round(statistics.median(r["rate"] for r in runs), 1),
                      "cpu_ms_per_instance": round(statistics.median(r["cpu_ms"] for r in runs), 3),
                      "store_records_per_round": runs[0]["records"]}
               for mode, runs in results.items()}  # fmt: skip
    drop = 1 - summary["on"]["instances_per_s"] / summary["off"]["instances_per_s"]
    return {"instances": instances, "per_study": per_study, "rounds": rounds, **summary,
            "rate_drop_percent": round(drop * 100, 1), "target": "drop <= 10%", "met": drop <= 0.10,
            "runs": results}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--per-study", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with bench_flag():
        out = run(args.instances, args.per_study, args.rounds)
    out["time"] = datetime.now(UTC).isoformat(timespec="seconds")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"ingest_audit_overhead-{datetime.now(UTC):%Y%m%d-%H%M%S}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
