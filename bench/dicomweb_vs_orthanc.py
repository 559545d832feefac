#!/usr/bin/env python3
"""samarkiv against Orthanc + its DICOMweb plugin: STOW-RS, QIDO-RS, WADO-RS.

    .venv/bin/python bench/dicomweb_vs_orthanc.py            # the full run
    .venv/bin/python bench/dicomweb_vs_orthanc.py --quick    # a smoke run (small sizes)
    ... --skip-orthanc | --phases stow,qido-sqlite,qido-postgres,wado

Same isolation as bench/dimse_vs_orthanc.py (whose helpers this reuses):
phases that start Orthanc run in a private network namespace (``unshare -n``),
the PostgreSQL phase outside it; all traffic goes to 127.0.0.1. Results: a
table on stdout, JSON and a PNG in bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pydicom
from benchkit import data as bdata
from benchkit import dicomweb as web
from benchkit.dicomweb_report import print_table, write_plot
from benchkit.servers import (
    Orthanc,
    Samarkiv,
    cpu_seconds,
    orthanc_dicomweb_plugin,
    orthanc_version,
)
from dimse_vs_orthanc import (
    Running,
    _median_run,
    attempt,
    drain_journal,
    git_revision,
    log,
    samarkiv_instances,
)

REPO = HERE.parent
PHASES = ("stow", "qido-sqlite", "qido-postgres", "wado")
ORTHANC_PHASES = ("stow", "qido-sqlite", "wado")  # need Orthanc, so run in the namespace

SIZES = {
    "full": {
        "stow_instances": 1000, "stow_per_request": 100, "stow_parallel": 4, "stow_rounds": 3,
        "qido_patients": 50_000, "qido_studies": 100_000, "qido_per_study": 10,
        "qido_queries": 300, "qido_blocks": 6, "qido_max_seconds": 60,
        "wado_instances": 500, "metadata_warm": 20, "retrieve_repeats": 9,
    },
    "quick": {
        "stow_instances": 200, "stow_per_request": 100, "stow_parallel": 4, "stow_rounds": 1,
        "qido_patients": 1_000, "qido_studies": 2_000, "qido_per_study": 10,
        "qido_queries": 50, "qido_blocks": 2, "qido_max_seconds": 20,
        "wado_instances": 100, "metadata_warm": 10, "retrieve_repeats": 2,
    },
}  # fmt: skip


@dataclass
class Context:
    args: argparse.Namespace
    work: Path
    results_dir: Path
    sizes: dict[str, int]

    @property
    def with_orthanc(self) -> bool:
        return not self.args.skip_orthanc

    def servers(self, root: Path, **orthanc_extra: Any) -> list[Samarkiv | Orthanc]:
        out: list[Samarkiv | Orthanc] = [Samarkiv(root / "samarkiv-data")]
        if self.with_orthanc:
            out.append(Orthanc(root / "orthanc", dicomweb=True, extra=dict(orthanc_extra)))
        return out


def _settle(server: Samarkiv | Orthanc) -> float:
    """samarkiv: wait for the write-back journal to empty; its CPU seconds."""
    return drain_journal(server) if isinstance(server, Samarkiv) else 0.0


def _stored(server: Samarkiv | Orthanc) -> int:
    return samarkiv_instances(server) if isinstance(server, Samarkiv) else int(server.statistics()["CountInstances"])


# --- phase: STOW-RS ingest ----------------------------------------------------------------


def phase_stow(ctx: Context) -> dict[str, Any]:
    """Both servers up at once; each round posts the same fresh files to one,
    then the other (separate archives), 100 instances per request."""
    z = ctx.sizes
    n, per, par, rounds = z["stow_instances"], z["stow_per_request"], z["stow_parallel"], z["stow_rounds"]
    root = ctx.work / "stow"
    log(f"stow: writing {rounds} x 2 x {n} CT_small copies")
    warm = bdata.make_files(root / "files-warm", label="WWARM", studies=1, per_study=10)
    sets = [
        {
            "1": bdata.make_files(root / f"files-{r}-1", label=f"W{r}A", studies=n // per, per_study=per),
            str(par): bdata.make_files(root / f"files-{r}-n", label=f"W{r}B", studies=n // per, per_study=per),
        }
        for r in range(rounds)
    ]  # fmt: skip
    size = sets[0]["1"].total_bytes
    out: dict[str, Any] = {"instances": n, "bytes": size, "per_request": per, "parallel": par, "rounds": rounds}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    with Running(out) as running:
        for server in ctx.servers(root):
            if running.start(server):
                try:
                    web.stow(server.dicomweb_url, web.stow_bodies(warm.files, per))  # first-use costs, not measured
                    _settle(server)
                    runs[server.name] = {"1": [], str(par): []}
                except Exception as exc:  # noqa: BLE001
                    log(f"  {server.name}: FAILED: {exc}")
                    out[server.name] = {"error": f"{type(exc).__name__}: {exc}"}
        for r, files in enumerate(sets):
            for key in ("1", str(par)):
                bodies = web.stow_bodies(files[key].files, per)
                for server in running.servers:
                    if server.name not in runs:
                        continue
                    try:
                        cpu = cpu_seconds(server.pid)
                        t = web.stow(server.dicomweb_url, bodies, clients=int(key))
                        cpu = cpu_seconds(server.pid) - cpu
                        deferred = _settle(server)
                    except Exception as exc:  # noqa: BLE001
                        log(f"  {server.name}: FAILED: {exc}")
                        out[server.name] = {"error": f"{type(exc).__name__}: {exc}"}
                        del runs[server.name]
                        continue
                    runs[server.name][key].append({"seconds": t, "cpu": cpu, "deferred_cpu": deferred})
                    log(f"  round {r + 1}/{rounds} {server.name}, {key} client(s): {n / t:.1f} instances/s, "
                        f"server CPU {cpu * 1000 / n:.2f} ms/instance"
                        + (f" (+{deferred * 1000 / n:.2f} when idle: journal to blob files, metadata)" if deferred else ""))  # fmt: skip
        for server in running.servers:
            if server.name not in runs:
                continue
            res: dict[str, Any] = {key: _median_run(v, n, size) for key, v in runs[server.name].items()}
            res["stored"] = _stored(server)
            expected = len(warm.files) + 2 * n * rounds
            if res["stored"] != expected:
                res["error"] = f"{server.name} holds {res['stored']} instances, expected {expected}"
            out[server.name] = res
            log(f"  {server.name}: median {res['1']['per_second']} (1) / {res[str(par)]['per_second']} ({par}) instances/s")
    return out


# --- phase: QIDO-RS latency ---------------------------------------------------------------------


def _catalogue(ctx: Context) -> bdata.Catalogue:
    z = ctx.sizes
    return bdata.new_catalogue(z["qido_patients"], z["qido_studies"], z["qido_per_study"])


def _expected_studies(cat: bdata.Catalogue) -> dict[str, int]:
    return {cat.patient_id(p): len(cat.studies_of(p)) for p in range(cat.patients)}


def _catalogue_dict(cat: bdata.Catalogue) -> dict[str, int]:
    return {"patients": cat.patients, "studies": cat.studies, "series": cat.series, "instances": cat.instances}


def _qido(ctx: Context, targets: list[tuple[str, Samarkiv | Orthanc]], patients: dict[str, int], out: dict[str, Any]) -> None:
    """QIDO-RS latency per target: one keep-alive connection each, 20 untimed
    warm-up queries, then blocks of queries alternating between targets."""
    z = ctx.sizes
    blocks = z["qido_blocks"] if len(targets) > 1 else 1
    per_block = -(-z["qido_queries"] // blocks)
    runs = {key: web.QidoRun() for key, _ in targets}
    cpu = {key: 0.0 for key, _ in targets}
    failed: dict[str, str] = {}
    clients = {key: web.QidoClient(server.dicomweb_url, patients) for key, server in targets}
    try:
        for b in range(blocks):
            for key, server in targets:
                if key in failed:
                    continue
                try:
                    c0 = cpu_seconds(server.pid)
                    run = clients[key].run(per_block, warmup=20 if b == 0 else 0, seed=1000 + b,
                                           max_seconds=z["qido_max_seconds"] / blocks, min_queries=max(5, 50 // blocks))  # fmt: skip
                    cpu[key] += cpu_seconds(server.pid) - c0
                    runs[key].merge(run)
                except Exception as exc:  # noqa: BLE001
                    failed[key] = f"{type(exc).__name__}: {exc}"
                    log(f"  {key}: FAILED: {exc}")
    finally:
        for c in clients.values():
            c.close()
    for key, _ in targets:
        if key in failed:
            out[key] = {"error": failed[key]}
            continue
        res = runs[key].as_dict()
        res["server_cpu_ms_per_query"] = round(cpu[key] * 1000 / (res["queries"] + 20), 2)
        out[key] = res
        log(f"  {key}: p50 {res['p50_ms']:.2f} ms, p95 {res['p95_ms']:.2f} ms over {res['queries']} queries, "
            f"{res['wrong_counts']} wrong study counts, server CPU {res['server_cpu_ms_per_query']} ms/query")  # fmt: skip


def _qido_orthanc_prepare(ctx: Context, root: Path, cat: bdata.Catalogue, out: dict[str, Any]) -> Orthanc | None:
    """Orthanc with one real study (stored over STOW-RS, its rows are the
    template), then the catalogue written into its SQLite index; returns the
    stopped server, or None when something failed. Every synthetic instance's
    attachment names the template's file: Orthanc's DICOMweb plugin reads a
    stored file for every study it answers (whatever StorageAccessOnFind
    says), and here that read always hits one file in the page cache."""
    files = bdata.make_files(root / "files", label="TPL", studies=1, per_study=10)
    server = Orthanc(root, dicomweb=True)
    with Running(out) as running:
        if not running.start(server, "orthanc-index-only"):
            return None
        try:
            web.stow(server.dicomweb_url, web.stow_bodies(files.files, 100))
        except Exception as exc:  # noqa: BLE001
            out["orthanc-index-only"] = {"error": f"template STOW: {type(exc).__name__}: {exc}"}
            return None
    log(f"qido-sqlite: adding {cat.studies:,} studies / {cat.instances:,} instances to Orthanc's SQLite index directly")
    fill = attempt(out, "orthanc-fill", lambda: bdata.fill_orthanc_index(server.index_file, cat, log=log, share_template_file=True))
    if "error" in fill:
        return None
    fill["index_bytes"] = server.index_file.stat().st_size
    log(f"  filled in {fill['seconds']} s ({fill['index_bytes'] / 1e9:.1f} GB)")
    server.extra = {"StorageAccessOnFind": "Never"}
    return server


def phase_qido_sqlite(ctx: Context) -> dict[str, Any]:
    root = ctx.work / "qido-sqlite"
    cat = _catalogue(ctx)
    out: dict[str, Any] = {"catalogue": _catalogue_dict(cat)}
    orthanc = _qido_orthanc_prepare(ctx, root / "orthanc", cat, out) if ctx.with_orthanc else None
    data = root / "samarkiv-data"
    log(f"qido-sqlite: filling samarkiv's SQLite index with {cat.studies:,} studies / {cat.instances:,} instances")
    # owned by the default organisation, as stores from the bench's client are: its
    # administrator's token sees them (the access policy filters QIDO-RS)
    fill = attempt(out, "samarkiv-fill", lambda: bdata.fill_samarkiv(f"sqlite:///{data / 'index.sqlite'}", cat,
                                                                     metadata=not ctx.args.no_metadata, owners="default",
                                                                     log=log))  # fmt: skip
    if "error" not in fill:
        fill["index_bytes"] = (data / "index.sqlite").stat().st_size
        log(f"  filled in {fill['seconds']} s ({fill['index_bytes'] / 1e9:.1f} GB)")
    with Running(out) as running:
        targets: list[tuple[str, Samarkiv | Orthanc]] = []
        if "error" not in fill and running.start(Samarkiv(data), "samarkiv-sqlite"):
            targets.append(("samarkiv-sqlite", running.servers[-1]))
        if orthanc is not None and running.start(orthanc, "orthanc-index-only"):
            targets.append(("orthanc-index-only", orthanc))
        log("qido-sqlite: samarkiv (SQLite) and Orthanc (index only, StorageAccessOnFind=Never), alternating")
        _qido(ctx, targets, _expected_studies(cat), out)
    return out


def phase_qido_postgres(ctx: Context) -> dict[str, Any]:
    root = ctx.work / "qido-postgres"
    cat = _catalogue(ctx)
    out: dict[str, Any] = {"catalogue": _catalogue_dict(cat)}
    try:
        url = bdata.create_pg_database()
    except Exception as exc:  # noqa: BLE001
        out["samarkiv-postgresql"] = {"error": f"PostgreSQL: {type(exc).__name__}: {exc}"}
        return out
    try:
        log(f"qido-postgres: filling {url.rsplit('/', 1)[1]} with {cat.studies:,} studies / {cat.instances:,} instances")
        fill = attempt(out, "samarkiv-fill", lambda: bdata.fill_samarkiv(url, cat, metadata=not ctx.args.no_metadata,
                                                                         owners="default", log=log))  # fmt: skip
        if "error" in fill:
            return out
        log(f"  filled in {fill['seconds']} s")
        with Running(out) as running:
            if running.start(Samarkiv(root / "samarkiv-data", index_url=url), "samarkiv-postgresql"):
                _qido(ctx, [("samarkiv-postgresql", running.servers[-1])], _expected_studies(cat), out)
        out.setdefault("samarkiv-postgresql", {})["server_version"] = bdata.pg_version()
    finally:
        bdata.drop_pg_database(url)
    return out


# --- phase: WADO-RS series metadata and study retrieve -------------------------------------------


def phase_wado(ctx: Context) -> dict[str, Any]:
    """One study with one series of N instances, stored over STOW-RS on both;
    series metadata (first request, then warm) and study retrieve, alternating."""
    z = ctx.sizes
    n = z["wado_instances"]
    root = ctx.work / "wado"
    log(f"wado: writing one study, one series of {n} instances")
    files = bdata.make_files(root / "files", label="WADO", studies=1, per_study=n)
    study = files.studies[0]
    series = str(pydicom.dcmread(files.files[0], stop_before_pixels=True).SeriesInstanceUID)
    # Another small series whose metadata is asked for first, so that the
    # measured first request pays for its own series, not for the server's
    # first use of the service.
    other = bdata.make_files(root / "files-other", label="WADOWARM", studies=1, per_study=10)
    other_series = str(pydicom.dcmread(other.files[0], stop_before_pixels=True).SeriesInstanceUID)
    out: dict[str, Any] = {"instances": n, "bytes": files.total_bytes}
    meta: dict[str, dict[str, Any]] = {}
    retrieve: dict[str, dict[str, Any]] = {}
    with Running(out) as running:
        live: list[Samarkiv | Orthanc] = []
        for server in ctx.servers(root):
            if running.start(server):
                try:
                    web.stow(server.dicomweb_url, web.stow_bodies(files.files, z["stow_per_request"]))
                    web.stow(server.dicomweb_url, web.stow_bodies(other.files, z["stow_per_request"]))
                    _settle(server)
                    live.append(server)
                except Exception as exc:  # noqa: BLE001
                    log(f"  {server.name}: FAILED to store the study: {exc}")
                    out[server.name] = {"error": f"STOW: {type(exc).__name__}: {exc}"}
        http = {server.name: web.client(server.dicomweb_url) for server in live}
        try:
            meta = _metadata(ctx, live, http, study, series, n, (other.studies[0], other_series, len(other.files)))
            retrieve = _retrieve(ctx, live, http, study, n)
        finally:
            for c in http.values():
                c.close()
    for server in live:
        out[server.name] = {"metadata": meta.get(server.name), "retrieve": retrieve.get(server.name)}
    return out


def _metadata(ctx: Context, live: list[Samarkiv | Orthanc], http: dict[str, Any], study: str, series: str, n: int,
              other: tuple[str, str, int]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """First request for the series (after one for ``other``, a different
    series, not counted), then warm requests alternating between servers,
    with gzip and without."""
    out: dict[str, dict[str, Any]] = {s.name: {} for s in live}
    for server in live:
        try:
            warmup = web.series_metadata(http[server.name], server.dicomweb_url, *other, "gzip")
            out[server.name]["other_series_first_ms"] = round(warmup["seconds"] * 1000, 2)
            cpu = cpu_seconds(server.pid)
            first = web.series_metadata(http[server.name], server.dicomweb_url, study, series, n, "gzip")
            first["server_cpu_ms"] = round((cpu_seconds(server.pid) - cpu) * 1000, 1)
            first["ms"] = round(first.pop("seconds") * 1000, 2)
            out[server.name]["first"] = first
            log(f"  {server.name}: series metadata, first request {first['ms']:.1f} ms "
                f"({first['wire_bytes'] / 1e3:.0f} kB, {first['content_encoding']})")  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            out[server.name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  {server.name}: series metadata FAILED: {exc}")
    for encoding in ("gzip", "identity"):
        times: dict[str, list[float]] = {s.name: [] for s in live}
        info: dict[str, dict[str, Any]] = {}
        for _ in range(ctx.sizes["metadata_warm"]):
            for server in live:
                if "error" in out[server.name]:
                    continue
                try:
                    res = web.series_metadata(http[server.name], server.dicomweb_url, study, series, n, encoding)
                except Exception as exc:  # noqa: BLE001
                    out[server.name] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                times[server.name].append(res["seconds"] * 1000)
                info[server.name] = res
        for server in live:
            if "error" in out[server.name] or not times[server.name]:
                continue
            out[server.name][f"warm_{encoding}"] = {
                "p50_ms": round(statistics.median(times[server.name]), 2),
                "min_ms": round(min(times[server.name]), 2),
                "max_ms": round(max(times[server.name]), 2),
                "requests": len(times[server.name]),
                "wire_bytes": info[server.name]["wire_bytes"],
                "content_encoding": info[server.name]["content_encoding"],
            }
            log(f"  {server.name}: series metadata, warm ({encoding}) p50 {out[server.name][f'warm_{encoding}']['p50_ms']:.1f} ms")
    return out


def _retrieve(ctx: Context, live: list[Samarkiv | Orthanc], http: dict[str, Any], study: str, n: int) -> dict[str, dict[str, Any]]:
    """One warm-up retrieve each (which also settles the Accept header: with
    ``transfer-syntax=*``, or, if a server refuses it, without), then rounds
    alternating between servers; median."""
    out: dict[str, dict[str, Any]] = {}
    accept: dict[str, str] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for server in live:
        for candidate in (web.RETRIEVE_ACCEPT, web.RETRIEVE_ACCEPT_PLAIN):
            try:
                web.retrieve_study(http[server.name], server.dicomweb_url, study, n, candidate)
                accept[server.name] = candidate
                runs[server.name] = []
                break
            except Exception as exc:  # noqa: BLE001
                out[server.name] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"  {server.name}: retrieve with Accept {candidate!r} FAILED: {exc}")
        if server.name in accept:
            out.pop(server.name, None)
    for r in range(ctx.sizes["retrieve_repeats"]):
        for server in live:
            if server.name not in runs:
                continue
            try:
                cpu = cpu_seconds(server.pid)
                res = web.retrieve_study(http[server.name], server.dicomweb_url, study, n, accept[server.name])
                res["cpu"] = cpu_seconds(server.pid) - cpu
            except Exception as exc:  # noqa: BLE001
                out[server.name] = {"error": f"{type(exc).__name__}: {exc}"}
                del runs[server.name]
                continue
            runs[server.name].append(res)
            log(f"  round {r + 1} {server.name}: retrieve {res['bytes'] / res['seconds'] / 1e6:.1f} MB/s, "
                f"server CPU {res['cpu'] * 1000 / n:.2f} ms/instance")  # fmt: skip
    for name, rs in runs.items():
        res = _median_run(rs, n, rs[0]["bytes"])
        res.pop("deferred_cpu_ms_per_instance", None)
        out[name] = {**res, "bytes": rs[0]["bytes"], "accept": accept[name], "content_type": rs[0]["content_type"]}
        log(f"  {name}: retrieve median {res['mb_per_second']} MB/s ({res['per_second']} instances/s)")
    return out


PHASE_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "stow": phase_stow,
    "qido-sqlite": phase_qido_sqlite,
    "qido-postgres": phase_qido_postgres,
    "wado": phase_wado,
}


def run_phases(ctx: Context, phases: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for phase in phases:
        started = time.perf_counter()
        attempt(results, phase, lambda phase=phase: PHASE_FUNCS[phase](ctx))
        results[phase]["phase_seconds"] = round(time.perf_counter() - started, 1)
        shutil.rmtree(ctx.work / phase, ignore_errors=True)
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
    proc = subprocess.run(cmd, timeout=args.timeout, check=False)
    if result.exists():
        return json.loads(result.read_text())
    return {p: {"error": f"namespace run exited with {proc.returncode} and wrote no results"} for p in phases}


def environment() -> dict[str, Any]:
    import httpx
    import sqlalchemy

    try:
        pg = bdata.pg_version()
    except Exception as exc:  # noqa: BLE001
        pg = f"unavailable ({type(exc).__name__})"
    try:
        plugin = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "orthanc-dicomweb"],
                                capture_output=True, text=True, timeout=30, check=False).stdout.strip() or "unknown"  # fmt: skip
    except OSError:
        plugin = "unknown"
    return {
        "samarkiv_revision": git_revision(),
        "orthanc": orthanc_version(),
        "orthanc_dicomweb": plugin,
        "postgresql": pg,
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "httpx": httpx.__version__,
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
    parser.add_argument("--no-metadata", action="store_true", help="fill instances.metadata with NULL (faster fill)")
    parser.add_argument("--qido-queries", type=int, help="QIDO-RS queries per server (default 300, quick 50)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where scratch data goes")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="where JSON and PNG go")
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
    if args.qido_queries:
        sizes["qido_queries"] = args.qido_queries
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
    if not args.skip_orthanc:
        for tool in ("Orthanc", "unshare", "ip"):
            if shutil.which(tool) is None:
                sys.exit(f"{tool} not found (Orthanc: apt-get install orthanc orthanc-dicomweb)")
        if orthanc_dicomweb_plugin() is None:
            sys.exit("Orthanc's DICOMweb plugin not found (apt-get install orthanc-dicomweb)")
    work = Path(tempfile.mkdtemp(prefix="samarkiv-webbench-", dir=args.workdir))
    ctx = Context(args, work, args.results, sizes_for(args))
    started = datetime.now(UTC)
    log(f"samarkiv vs Orthanc DICOMweb ({'quick' if args.quick else 'full'}): phases {', '.join(args.phase_list)}; scratch {work}")
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
    orthanc_config = None
    if not args.skip_orthanc:
        config = Orthanc(Path("/ORTHANC-ROOT"), dicomweb=True).config()
        orthanc_config = {k: v for k, v in config.items() if "Port" not in k}
        orthanc_config["StorageAccessOnFind (qido-sqlite only)"] = "Never"
    report = {
        "benchmark": "dicomweb_vs_orthanc",
        "mode": "quick" if args.quick else "full",
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": ctx.sizes,
        "phases": args.phase_list,
        "orthanc_config": orthanc_config,
        "environment": environment(),
        "results": {p: results.get(p) for p in args.phase_list},
    }
    out = args.results / f"dicomweb_vs_orthanc-{args.stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    table = print_table(report)
    (args.results / f"dicomweb_vs_orthanc-{args.stamp}.txt").write_text(table + "\n")
    png = write_plot(report, args.results / f"dicomweb_vs_orthanc-{args.stamp}.png")
    log(f"results: {out}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
