#!/usr/bin/env python3
"""samarkiv against Orthanc over DIMSE: C-STORE ingest, C-FIND latency, C-GET rate.

    /work/venv/bin/python bench/dimse_vs_orthanc.py            # the full run
    /work/venv/bin/python bench/dimse_vs_orthanc.py --quick    # a smoke run (small sizes)
    ... --skip-orthanc | --phases ingest,find-sqlite,find-postgres,get | --profile

Phases that start Orthanc run in a private network namespace (the script
re-executes itself under ``unshare -n``), since Orthanc cannot bind to
loopback only; the PostgreSQL phase runs outside it, where 127.0.0.1:5432 is.
All traffic goes to 127.0.0.1. Results: a table on stdout, JSON and a PNG in
bench/results/. See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchkit import data as bdata  # noqa: E402
from benchkit import dicom as bdicom  # noqa: E402
from benchkit.profile import format_summary, summarise  # noqa: E402
from benchkit.report import print_table, write_plot  # noqa: E402
from benchkit.servers import Orthanc, Profiler, Samarkiv, cpu_seconds, http_text, orthanc_version  # noqa: E402

REPO = HERE.parent
PHASES = ("ingest", "find-sqlite", "find-postgres", "get")
ORTHANC_PHASES = ("ingest", "find-sqlite", "get")  # need Orthanc, so run in the namespace

SIZES = {
    "full": {
        "ingest_studies": 10, "ingest_per_study": 100, "parallel": 4, "ingest_rounds": 5,
        "find_patients": 50_000, "find_studies": 100_000, "find_per_study": 10, "find_queries": 300, "find_blocks": 6, "find_max_seconds": 60,
        "orthanc_sent_studies": 200, "orthanc_sent_per_study": 10,
        "get_instances": 500, "get_repeats": 3,
    },
    "quick": {
        "ingest_studies": 2, "ingest_per_study": 50, "parallel": 4, "ingest_rounds": 1,
        "find_patients": 1_000, "find_studies": 2_000, "find_per_study": 10, "find_queries": 50, "find_blocks": 2, "find_max_seconds": 20,
        "orthanc_sent_studies": 20, "orthanc_sent_per_study": 10,
        "get_instances": 100, "get_repeats": 2,
    },
}  # fmt: skip


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


@dataclass
class Context:
    args: argparse.Namespace
    work: Path
    results_dir: Path
    sizes: dict[str, int]

    @property
    def with_orthanc(self) -> bool:
        return not self.args.skip_orthanc

    def profiler(self, server: Samarkiv | Orthanc, label: str) -> Profiler:
        """py-spy on samarkiv during one measurement, when --profile is given."""
        if not self.args.profile or not isinstance(server, Samarkiv):
            return Profiler(None, None)
        return Profiler(server.pid, self.results_dir / f"profile-{self.args.stamp}-{label}.txt")


def attempt(results: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement; a failure is recorded, and the others still run."""
    try:
        results[key] = fn()
    except Exception as exc:  # noqa: BLE001
        log(f"  {key}: FAILED: {exc}")
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        if os.environ.get("BENCH_TRACEBACK"):
            traceback.print_exc()
    return results[key]


def summarise_profile(ctx: Context, label: str) -> None:
    path = ctx.results_dir / f"profile-{ctx.args.stamp}-{label}.txt"
    if ctx.args.profile and path.exists() and path.stat().st_size:
        text = format_summary(summarise(path, 30), label)
        path.with_suffix(".summary.txt").write_text(text + "\n")
        log(f"  profile of samarkiv written to {path} (summary: {path.with_suffix('.summary.txt').name})")


def drain_journal(server: Samarkiv, timeout: float = 300) -> float:
    """Wait until samarkiv has done what it defers to idle time (moving the
    write-back journal to blob files, preparing WADO-RS metadata), so that it
    never overlaps the next measurement of either server; return the CPU
    seconds it cost."""
    cpu = cpu_seconds(server.pid)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        metrics = http_text(f"http://127.0.0.1:{server.http_port}/metrics", headers=server.headers)
        waiting = re.search(r"^samarkiv_journal_instances (\S+)$", metrics, re.M)
        prepared = re.search(r"^samarkiv_metadata_prepared_total (\S+)$", metrics, re.M)
        state = prepared.group(1) if prepared else None
        if (waiting is None or float(waiting.group(1)) == 0) and state == last:
            return cpu_seconds(server.pid) - cpu
        last = state
        time.sleep(1.0)
    raise TimeoutError("samarkiv did not finish its idle-time work")


def samarkiv_instances(server: Samarkiv) -> int:
    with sqlite3.connect(server.data / "index.sqlite") as db:
        return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])


# --- shared ------------------------------------------------------------------------------


class Running:
    """Servers started for one phase; stopped on exit even on error. A server
    that fails to start is recorded under its name and left out."""

    def __init__(self, out: dict[str, Any]) -> None:
        self.out = out
        self.servers: list[Samarkiv | Orthanc] = []

    def start(self, server: Samarkiv | Orthanc, key: str | None = None) -> Samarkiv | Orthanc | None:
        try:
            server.start()
        except Exception as exc:  # noqa: BLE001
            log(f"  {server.name}: FAILED to start: {exc}")
            self.out[key or server.name] = {"error": f"start: {exc}"}
            return None
        self.servers.append(server)
        return server

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc: object) -> None:
        for server in reversed(self.servers):
            server.stop()


def _median_run(runs: list[dict[str, Any]], instances: int, size: int) -> dict[str, Any]:
    seconds = statistics.median(r["seconds"] for r in runs)
    return {
        "seconds": round(seconds, 3),
        "per_second": round(instances / seconds, 1),
        "mb_per_second": round(size / seconds / 1e6, 2),
        "server_cpu_ms_per_instance": round(statistics.median(r["cpu"] for r in runs) * 1000 / instances, 2),
        # samarkiv: CPU spent later, when idle, moving the write-back journal to blob files
        "deferred_cpu_ms_per_instance": round(statistics.median(r.get("deferred_cpu", 0.0) for r in runs) * 1000 / instances, 2),
        "runs_per_second": [round(instances / r["seconds"], 1) for r in runs],
    }


# --- phase: C-STORE ingest --------------------------------------------------------------


def phase_ingest(ctx: Context) -> dict[str, Any]:
    """Both servers up at once; each round sends fresh files to one, then the
    other, so load from elsewhere on the machine hits both alike."""
    z = ctx.sizes
    n = z["ingest_studies"] * z["ingest_per_study"]
    parallel, rounds = z["parallel"], z["ingest_rounds"]
    root = ctx.work / "ingest"
    log(f"ingest: writing {rounds} x 2 x {n} CT_small copies")
    warm = bdata.make_files(root / "files-warm", label="WARM", studies=1, per_study=10)
    sets = [
        {
            "1": bdata.make_files(root / f"files-{r}-1", label=f"I{r}A", studies=z["ingest_studies"], per_study=z["ingest_per_study"]),
            str(parallel): bdata.make_files(root / f"files-{r}-n", label=f"I{r}B", studies=z["ingest_studies"], per_study=z["ingest_per_study"]),
        }
        for r in range(rounds)
    ]  # fmt: skip
    size = sets[0]["1"].total_bytes
    out: dict[str, Any] = {"instances": n, "bytes": size, "parallel": parallel, "rounds": rounds}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    with Running(out) as running:
        candidates: list[Samarkiv | Orthanc] = [Samarkiv(root / "samarkiv-data")]
        if ctx.with_orthanc:
            candidates.append(Orthanc(root / "orthanc"))
        for server in candidates:
            if running.start(server):
                bdicom.send(server.aet, server.dicom_port, [warm.files])  # first-use costs, not measured
                runs[server.name] = {"1": [], str(parallel): []}
        for r, files in enumerate(sets):
            for key in ("1", str(parallel)):
                for server in running.servers:
                    if server.name not in runs:
                        continue
                    chunks = [files[key].files] if key == "1" else bdicom.split(files[key].files, parallel)
                    label = f"ingest-{key}"
                    try:
                        with ctx.profiler(server, label) if r == 0 else Profiler(None, None):
                            cpu = cpu_seconds(server.pid)
                            t = bdicom.send(server.aet, server.dicom_port, chunks)
                            cpu = cpu_seconds(server.pid) - cpu
                        deferred = drain_journal(server) if isinstance(server, Samarkiv) else 0.0
                    except Exception as exc:  # noqa: BLE001
                        log(f"  {server.name}: FAILED: {exc}")
                        out[server.name] = {"error": f"{type(exc).__name__}: {exc}"}
                        del runs[server.name]
                        continue
                    if r == 0:
                        summarise_profile(ctx, label)
                    runs[server.name][key].append({"seconds": t, "cpu": cpu, "deferred_cpu": deferred})
                    log(f"  round {r + 1}/{rounds} {server.name}, {key} association(s): {n / t:.1f} instances/s, "
                        f"server CPU {cpu * 1000 / n:.2f} ms/instance"
                        + (f" (+{deferred * 1000 / n:.2f} when idle: journal to blob files, metadata)" if deferred else ""))  # fmt: skip
        for server in running.servers:
            if server.name not in runs:
                continue
            res = {key: _median_run(v, n, size) for key, v in runs[server.name].items()}
            stored = samarkiv_instances(server) if isinstance(server, Samarkiv) else server.statistics()["CountInstances"]
            expected = len(warm.files) + 2 * n * rounds
            res["stored"] = stored
            if stored != expected:
                res["error"] = f"{server.name} holds {stored} instances, expected {expected}"
            out[server.name] = res
            log(f"  {server.name}: median {res['1']['per_second']} (1) / {res[str(parallel)]['per_second']} ({parallel}) instances/s")
    return out


# --- phase: C-FIND latency ------------------------------------------------------------------


def _catalogue(ctx: Context) -> bdata.Catalogue:
    z = ctx.sizes
    return bdata.new_catalogue(z["find_patients"], z["find_studies"], z["find_per_study"])


def _expected_studies(cat: bdata.Catalogue) -> dict[str, int]:
    return {cat.patient_id(p): len(cat.studies_of(p)) for p in range(cat.patients)}


@dataclass
class FindTarget:
    key: str
    server: Samarkiv | Orthanc
    patients: dict[str, int]
    issuer: str | None = None  # sent as IssuerOfPatientID with every Patient ID


def _find(ctx: Context, targets: list[FindTarget], out: dict[str, Any], variants: tuple[str, ...] = ("basic", "computed")) -> None:
    """C-FIND latency for each target, basic and with computed keys.

    Each target gets one association per variant, opened before the first
    query and kept to the end. With several targets, queries go in blocks
    that alternate between them, so that load from elsewhere on the machine
    hits all of them alike.
    """
    q = ctx.sizes["find_queries"]
    blocks = ctx.sizes["find_blocks"] if len(targets) > 1 else 1
    per_block = -(-q // blocks)
    for variant in variants:
        runs = {t.key: bdicom.FindRun() for t in targets}
        cpu = {t.key: 0.0 for t in targets}
        failed: dict[str, str] = {}
        clients: dict[str, bdicom.FindClient] = {}
        profiled = [t for t in targets if isinstance(t.server, Samarkiv)]
        label = f"find-{variant}-{profiled[0].key}" if profiled else ""
        try:
            for t in targets:
                try:
                    clients[t.key] = bdicom.FindClient(t.server.aet, t.server.dicom_port, t.patients,
                                                       computed=variant == "computed", issuer=t.issuer).open()  # fmt: skip
                except Exception as exc:  # noqa: BLE001
                    failed[t.key] = f"{type(exc).__name__}: {exc}"
                    log(f"  {t.key} ({variant}): FAILED: {exc}")
            with ctx.profiler(profiled[0].server, label) if profiled and variant == "basic" else Profiler(None, None):
                for b in range(blocks):
                    for t in targets:
                        if t.key in failed:
                            continue
                        try:
                            c0 = cpu_seconds(t.server.pid)
                            run = clients[t.key].run(per_block, warmup=20 if b == 0 else 0, seed=1000 + b,
                                                     max_seconds=ctx.sizes["find_max_seconds"] / blocks,
                                                     min_queries=max(5, 50 // blocks))  # fmt: skip
                            cpu[t.key] += cpu_seconds(t.server.pid) - c0
                            runs[t.key].merge(run)
                        except Exception as exc:  # noqa: BLE001
                            failed[t.key] = f"{type(exc).__name__}: {exc}"
                            log(f"  {t.key} ({variant}): FAILED: {exc}")
        finally:
            for client in clients.values():
                client.close()
        if profiled and variant == "basic":
            summarise_profile(ctx, label)
        for t in targets:
            entry = out.setdefault(t.key, {})
            if t.key in failed:
                entry[variant] = {"error": failed[t.key]}
                continue
            res = runs[t.key].as_dict()
            res["server_cpu_ms_per_query"] = round(cpu[t.key] * 1000 / (res["queries"] + 20), 2)
            res["associations"] = clients[t.key].associations
            entry[variant] = res
            log(f"  {t.key} ({variant}): p50 {res['p50_ms']:.2f} ms, p95 {res['p95_ms']:.2f} ms over {res['queries']} queries, "
                f"{res['wrong_counts']} wrong answer counts, {res['failed_queries']} unanswered, "
                f"server CPU {res['server_cpu_ms_per_query']} ms/query")  # fmt: skip
            if res["time_capped"]:
                log(f"  {t.key} ({variant}): slow; stopped after {res['queries']} queries ({ctx.sizes['find_max_seconds']} s cap)")


def _find_national(ctx: Context, server: Samarkiv | Orthanc, key: str, cat: bdata.Catalogue, out: dict[str, Any]) -> None:
    """C-FIND by personnummer (Patient ID + the national issuer OID): each
    answer is the person's studies at all three organisations, resolved
    through the master patient index (samarkiv/identity/query.py)."""
    log(f"{key}: C-FIND by personnummer, the person's studies at three organisations")
    _find(ctx, [FindTarget(key, server, cat.national_study_counts(), bdata.PERSONNUMMER_OID)], out, variants=("basic",))


def phase_find_sqlite(ctx: Context) -> dict[str, Any]:
    root = ctx.work / "find-sqlite"
    cat = _catalogue(ctx)
    out: dict[str, Any] = {"catalogue": {"patients": cat.patients, "studies": cat.studies, "series": cat.series, "instances": cat.instances}}
    orthanc = _find_orthanc_prepare(ctx, root / "orthanc", cat, out) if ctx.with_orthanc else None

    data = root / "samarkiv-data"
    log(f"find-sqlite: filling samarkiv's SQLite index with {cat.studies:,} studies / {cat.instances:,} instances")
    fill = attempt(out, "samarkiv-fill", lambda: bdata.fill_samarkiv(f"sqlite:///{data / 'index.sqlite'}", cat,
                                                                     metadata=not ctx.args.no_metadata, owners="default", log=log))  # fmt: skip
    if "error" not in fill:
        fill["index_bytes"] = (data / "index.sqlite").stat().st_size
        log(f"  filled in {fill['seconds']} s ({fill['index_bytes'] / 1e9:.1f} GB)")
    patients = _expected_studies(cat)
    with Running(out) as running:
        targets = []
        if "error" not in fill and running.start(Samarkiv(data), "samarkiv-sqlite"):
            targets.append(FindTarget("samarkiv-sqlite", running.servers[-1], patients))
        if orthanc is not None:
            orthanc.extra = {"StorageAccessOnFind": "Never"}
            if running.start(orthanc, "orthanc-big-index-only"):
                targets.append(FindTarget("orthanc-big-index-only", orthanc, patients))
        log("find-sqlite: samarkiv (SQLite) and Orthanc (index only, StorageAccessOnFind=Never), alternating")
        _find(ctx, targets, out)
        if targets and targets[0].key == "samarkiv-sqlite":
            _find_national(ctx, targets[0].server, "samarkiv-sqlite-national", cat, out)
    if orthanc is not None and "p50_ms" in (_dig(out, "orthanc-big-index-only", "basic") or {}):
        # Orthanc never runs ANALYZE on its index; without statistics SQLite may
        # pick a poor plan. This shows what Orthanc does with them.
        log("find-sqlite: Orthanc index-only again, after ANALYZE of its SQLite index")
        key = "orthanc-big-index-only-analyzed"
        try:
            with sqlite3.connect(orthanc.index_file) as db:
                db.execute("ANALYZE")
        except sqlite3.Error as exc:
            out[key] = {"error": f"ANALYZE: {exc}"}
            return out
        with Running(out) as running:
            if running.start(orthanc, key):
                _find(ctx, [FindTarget(key, orthanc, patients)], out, variants=("basic",))
    return out


def _dig(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _find_orthanc_prepare(ctx: Context, root: Path, cat: bdata.Catalogue, out: dict[str, Any]) -> Orthanc | None:
    """Orthanc with a few real studies, then the catalogue added to its index.

    Measures Orthanc with its defaults on the small index, then on the full
    one (for the sent patients); returns the stopped server for the
    index-only measurement, or None when something failed."""
    z = ctx.sizes
    sent = bdata.make_files(root / "files", label="SENT", studies=z["orthanc_sent_studies"],
                            per_study=z["orthanc_sent_per_study"], studies_per_patient=2)  # fmt: skip
    sent_patients = {pid: len(uids) for pid, uids in sent.patients.items()}
    server = Orthanc(root)
    n_sent = len(sent.files)
    log(f"find-sqlite: Orthanc, {n_sent:,} instances sent with storescu, default settings")
    with Running(out) as running:
        if not running.start(server, "orthanc-small-default"):
            return None
        try:
            bdicom.send(server.aet, server.dicom_port, [sent.files])
        except Exception as exc:  # noqa: BLE001
            out["orthanc-small-default"] = {"error": str(exc)}
            return None
        _find(ctx, [FindTarget("orthanc-small-default", server, sent_patients)], out)
        out["orthanc-small-default"]["instances"] = n_sent
    log(f"find-sqlite: adding {cat.studies:,} studies / {cat.instances:,} instances to Orthanc's SQLite index directly")
    fill = attempt(out, "orthanc-fill", lambda: bdata.fill_orthanc_index(server.index_file, cat, log=log))
    if "error" in fill:
        return None
    fill["index_bytes"] = server.index_file.stat().st_size
    log(f"  filled in {fill['seconds']} s ({fill['index_bytes'] / 1e9:.1f} GB)")
    # Default StorageAccessOnFind (Always): answers are read from the stored
    # files, which exist only for the sent patients, so those are queried.
    log("find-sqlite: Orthanc defaults on the full index, sent patients")
    with Running(out) as running:
        if running.start(server, "orthanc-big-default"):
            _find(ctx, [FindTarget("orthanc-big-default", server, sent_patients)], out)
            out["orthanc-big-default"]["statistics"] = server.statistics()
    return server


def phase_find_postgres(ctx: Context) -> dict[str, Any]:
    root = ctx.work / "find-postgres"
    cat = _catalogue(ctx)
    out: dict[str, Any] = {"catalogue": {"patients": cat.patients, "studies": cat.studies, "series": cat.series, "instances": cat.instances}}
    try:
        url = bdata.create_pg_database()
    except Exception as exc:  # noqa: BLE001
        out["samarkiv-postgresql"] = {"error": f"PostgreSQL: {type(exc).__name__}: {exc}"}
        return out
    try:
        log(f"find-postgres: filling {url.rsplit('/', 1)[1]} with {cat.studies:,} studies / {cat.instances:,} instances")
        fill = attempt(out, "samarkiv-fill", lambda: bdata.fill_samarkiv(url, cat, metadata=not ctx.args.no_metadata, owners="default", log=log))
        if "error" in fill:
            return out
        log(f"  filled in {fill['seconds']} s")
        with Running(out) as running:
            if running.start(Samarkiv(root / "samarkiv-data", index_url=url), "samarkiv-postgresql"):
                _find(ctx, [FindTarget("samarkiv-postgresql", running.servers[-1], _expected_studies(cat))], out)
                _find_national(ctx, running.servers[-1], "samarkiv-postgresql-national", cat, out)
        out.setdefault("samarkiv-postgresql", {})["server_version"] = bdata.pg_version()
    finally:
        bdata.drop_pg_database(url)
    return out


# --- phase: C-GET ------------------------------------------------------------------------------


def phase_get(ctx: Context) -> dict[str, Any]:
    """Both servers hold the study; retrievals alternate between them."""
    z = ctx.sizes
    root = ctx.work / "get"
    n = z["get_instances"]
    log(f"get: writing one study of {n} instances (2 series)")
    study = bdata.make_files(root / "files", label="GET", studies=1, per_study=n, series_per_study=2)
    uid = study.studies[0]
    out: dict[str, Any] = {"instances": n, "bytes": study.total_bytes, "repeats": z["get_repeats"]}
    scratch = root / "received"
    scratch.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    with Running(out) as running:
        candidates: list[Samarkiv | Orthanc] = [Samarkiv(root / "samarkiv-data")]
        if ctx.with_orthanc:
            candidates.append(Orthanc(root / "orthanc"))
        for server in candidates:
            if not running.start(server):
                continue
            try:
                bdicom.send(server.aet, server.dicom_port, [study.files])
                bdicom.get_study(server.aet, server.dicom_port, uid, n, scratch)  # warm-up, not counted
                runs[server.name] = []
            except Exception as exc:  # noqa: BLE001
                log(f"  {server.name}: FAILED: {exc}")
                out[server.name] = {"error": f"{type(exc).__name__}: {exc}"}
        for r in range(z["get_repeats"]):
            for server in running.servers:
                if server.name not in runs:
                    continue
                try:
                    with ctx.profiler(server, "get") if r == 0 else Profiler(None, None):
                        cpu = cpu_seconds(server.pid)
                        res = bdicom.get_study(server.aet, server.dicom_port, uid, n, scratch)
                        res["cpu"] = cpu_seconds(server.pid) - cpu
                except Exception as exc:  # noqa: BLE001
                    log(f"  {server.name}: FAILED: {exc}")
                    out[server.name] = {"error": f"{type(exc).__name__}: {exc}"}
                    del runs[server.name]
                    continue
                if r == 0:
                    summarise_profile(ctx, "get")
                runs[server.name].append(res)
                log(f"  round {r + 1}/{z['get_repeats']} {server.name}: {n / res['seconds']:.1f} instances/s, "
                    f"server CPU {res['cpu'] * 1000 / n:.2f} ms/instance")  # fmt: skip
    for name, rs in runs.items():
        out[name] = _median_run(rs, n, rs[0]["bytes"])
        out[name]["bytes"] = rs[0]["bytes"]
        log(f"  {name}: median {out[name]['per_second']} instances/s, {out[name]['mb_per_second']} MB/s")
    return out


PHASE_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "ingest": phase_ingest,
    "find-sqlite": phase_find_sqlite,
    "find-postgres": phase_find_postgres,
    "get": phase_get,
}


def run_phases(ctx: Context, phases: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for phase in phases:
        started = time.perf_counter()
        attempt(results, phase, lambda: PHASE_FUNCS[phase](ctx))
        results[phase]["phase_seconds"] = round(time.perf_counter() - started, 1)
        shutil.rmtree(ctx.work / phase, ignore_errors=True)  # GBs for find: free them early
    return results


# --- orchestration ---------------------------------------------------------------------------------


def in_namespace(args: argparse.Namespace, phases: list[str], work: Path) -> dict[str, Any]:
    """Re-run this script for ``phases`` inside a new, private network namespace."""
    result = work / "namespace-results.json"
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
    cmd = [*unshare, "--", sys.executable, str(Path(__file__).resolve()), *sys.argv[1:],
           "--phases", ",".join(phases), "--_inner", "--_work", str(work), "--_result", str(result),
           "--_stamp", args.stamp]  # fmt: skip
    log(f"running {', '.join(phases)} in a private network namespace")
    proc = subprocess.run(cmd, timeout=args.timeout)
    if result.exists():
        return json.loads(result.read_text())
    return {p: {"error": f"namespace run exited with {proc.returncode} and wrote no results"} for p in phases}


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "samarkiv"], capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+uncommitted" if dirty else "")
    except OSError:
        return "unknown"


def environment() -> dict[str, Any]:
    import pydicom
    import pynetdicom
    import sqlalchemy

    def placeholder(name: str) -> bool:
        return "Placeholder" in (REPO / "samarkiv" / "dimse" / name).read_text()[:200]

    try:
        pg = bdata.pg_version()
    except Exception as exc:  # noqa: BLE001
        pg = f"unavailable ({type(exc).__name__})"
    return {
        "samarkiv_revision": git_revision(),
        "find_py_placeholder": placeholder("find.py"),
        "retrieve_py_placeholder": placeholder("retrieve.py"),
        "orthanc": orthanc_version(),
        "dcmtk": bdicom.dcmtk_version(),
        "postgresql": pg,
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every phase")
    parser.add_argument("--skip-orthanc", action="store_true", help="measure samarkiv only (no namespace needed)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--profile", action="store_true", help="record samarkiv with py-spy during each measurement")
    parser.add_argument("--no-metadata", action="store_true", help="fill instances.metadata with NULL (faster fill)")
    parser.add_argument("--find-queries", type=int, help="C-FIND queries per measurement (default 300, quick 50)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where scratch data goes")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where JSON, PNG and profiles go")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="give up after this many seconds")
    parser.add_argument("--_inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_stamp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.phase_list = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phase_list) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    args.stamp = args._stamp or datetime.now().strftime("%Y%m%d-%H%M%S")
    return args


def sizes_for(args: argparse.Namespace) -> dict[str, int]:
    sizes = dict(SIZES["quick" if args.quick else "full"])
    if args.find_queries:
        sizes["find_queries"] = args.find_queries
    return sizes


def inner_main(args: argparse.Namespace) -> int:
    """Inside the namespace: bring loopback up, run the phases, write JSON."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    ctx = Context(args, args._work, args.results, sizes_for(args))
    results = run_phases(ctx, args.phase_list)
    args._result.write_text(json.dumps(results, indent=2))
    return 0


def main() -> int:
    args = parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    if args._inner:
        return inner_main(args)
    for tool in ("storescu", "getscu") + (() if args.skip_orthanc else ("Orthanc", "unshare", "ip")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (DCMTK: apt-get install dcmtk; Orthanc: apt-get install orthanc)")
    work = Path(tempfile.mkdtemp(prefix="samarkiv-bench-", dir=args.workdir))
    ctx = Context(args, work, args.results, sizes_for(args))
    started = datetime.now(UTC)
    log(f"samarkiv vs Orthanc ({'quick' if args.quick else 'full'}): phases {', '.join(args.phase_list)}; scratch {work}")
    results: dict[str, Any] = {}
    try:
        inside = [p for p in args.phase_list if p in ORTHANC_PHASES] if not args.skip_orthanc else []
        if inside:
            results.update(in_namespace(args, inside, work))
        outside = [p for p in args.phase_list if p not in inside]
        results.update(run_phases(ctx, outside))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "dimse_vs_orthanc",
        "mode": "quick" if args.quick else "full",
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": ctx.sizes,
        "phases": args.phase_list,
        "orthanc_config": None if args.skip_orthanc else {k: v for k, v in Orthanc(Path("/ORTHANC-ROOT")).config().items() if "Port" not in k},
        "environment": environment(),
        "results": {p: results.get(p) for p in args.phase_list},
    }
    out = args.results / f"dimse_vs_orthanc-{args.stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    table = print_table(report)
    (args.results / f"dimse_vs_orthanc-{args.stamp}.txt").write_text(table + "\n")
    png = write_plot(report, args.results / f"dimse_vs_orthanc-{args.stamp}.png")
    log(f"results: {out}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
