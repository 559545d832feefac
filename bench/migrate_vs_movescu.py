#!/usr/bin/env python3
"""Migration throughput from Orthanc: ``samarkiv migrate`` against plain DCMTK.

    .venv/bin/python bench/migrate_vs_movescu.py            # 40 studies x 25 CT instances
    .venv/bin/python bench/migrate_vs_movescu.py --studies 10 --per-study 10

Orthanc (Debian package) is filled with copies of a real CT sample, then the
same studies are pulled four ways, each with 1 and 4 parallel associations:

- samarkiv C-MOVE: ``Runner.run()`` of a migration job (C-FIND enumeration and
  IMAGE-level listing included, overlapping the pulls) moving into a running
  ``samarkiv serve``; then, for the pull-only figure, a second job into a
  fresh archive that lists everything first (``plan_all``, timed apart) and
  then pulls;
- samarkiv C-GET: the same, with C-GET into the migrating process;
- DCMTK: findscu lists the studies (STUDY level, one association, answers
  written with ``--extract``), then movescu into a storescp (``--fork``) or
  getscu pulls them, split over 1 or 4 processes (one association each, one
  query file per study).

Two figures per side, the same work on both:

- end to end: samarkiv's whole ``Runner`` run (enumeration, IMAGE-level
  planning, pull, index commit) against DCMTK's findscu + pull;
- pull only: samarkiv's pull phase (planning timed apart) against DCMTK's
  pull phase (findscu timed apart).

The target (>= 80% of DCMTK) is held against the end-to-end figure of
DCMTK movescu with as many associations (the issue's peer, for C-MOVE and
C-GET alike); C-GET is also shown against getscu, like for like. A migration
starts from nothing but the source's address, so enumerating is part of the
job on both sides (see bench/README.md). Rates are instances/s and MB/s of
the objects received.
Everything runs in a private network namespace (``unshare -n``: Orthanc
cannot bind to loopback only). /tmp/BENCH_RUNNING exists while it runs.
Results: JSON and markdown in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from benchkit import data as bdata  # noqa: E402
from benchkit import dicom as bdicom  # noqa: E402
from benchkit.flag import bench_flag  # noqa: E402
from benchkit.servers import Orthanc, Profiler, Samarkiv, cpu_seconds, dcmtk_env, free_port, orthanc_version, spawn, stop_process  # noqa: E402

MIGRATOR_AET, STORESCP_AET, DCMTK_AET = "SAMARKIV-MIG", "STORESCP", "DCMTKSCU"
TARGET = 0.8


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class CpuMeter:
    """CPU seconds (user + system) from here on: of the children this process reaped (DCMTK's
    tools; samarkiv's C-GET workers), of this process too where it migrates (``own``), of a
    ``serve`` process, and of Orthanc."""

    def __init__(self, orthanc: Orthanc, serve_pid: int | None = None, own: bool = False) -> None:
        self.orthanc, self.serve_pid, self.own = orthanc, serve_pid, own
        self.start = self._now()

    def _now(self) -> tuple[float, float, float]:
        usages = [resource.getrusage(resource.RUSAGE_CHILDREN)] + ([resource.getrusage(resource.RUSAGE_SELF)] if self.own else [])
        return (sum(u.ru_utime + u.ru_stime for u in usages), cpu_seconds(self.serve_pid) if self.serve_pid else 0.0,
                cpu_seconds(self.orthanc.pid))  # fmt: skip

    def read(self) -> dict[str, float]:
        own, serve, orthanc = (round(b - a, 3) for a, b in zip(self.start, self._now(), strict=True))
        return {"cpu_seconds": round(own + serve, 3), "orthanc_cpu_seconds": orthanc}


# --- DCMTK ----------------------------------------------------------------------------------------


def query_files(studies: list[str], folder: Path) -> list[Path]:
    """One STUDY-level query file per study (a bare data set, as movescu/getscu read it)."""
    from pydicom import Dataset

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, uid in enumerate(studies):
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = uid
        path = folder / f"q{n:04d}.dcm"
        q.save_as(path, implicit_vr=False, little_endian=True)
        paths.append(path)
    return paths


def received(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def dcmtk_find(orthanc: Orthanc, folder: Path) -> list[Path]:
    """findscu at STUDY level (one association), its answers extracted to files; one query file per study."""
    from pydicom import dcmread

    answers = folder / "answers"
    answers.mkdir(parents=True)
    cmd = ["findscu", "-S", "-aet", DCMTK_AET, "-aec", orthanc.aet, "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
           "-k", "StudyDate", "--extract", "-od", str(answers), "127.0.0.1", str(orthanc.dicom_port)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=120)
    if proc.returncode != 0:
        raise bdicom.BenchError(f"findscu failed: {proc.stderr[-1000:]}")
    studies = sorted(str(dcmread(p).StudyInstanceUID) for p in answers.iterdir())
    return query_files(studies, folder / "queries")


def dcmtk_pull(mode: str, orthanc: Orthanc, parallel: int, out: Path, storescp_port: int) -> dict[str, Any]:
    out.mkdir(parents=True)
    storescp = None
    if mode == "move":
        storescp = spawn(["storescp", "--fork", "-aet", STORESCP_AET, "-od", str(out), str(storescp_port)], out.parent / "storescp.log", dcmtk_env())
        time.sleep(0.5)
    try:
        meter = CpuMeter(orthanc)
        started = time.perf_counter()
        queries = dcmtk_find(orthanc, out.parent / f"{out.name}-find")
        found = time.perf_counter()
        groups = [queries[i::parallel] for i in range(parallel)]
        procs = []
        for n, group in enumerate(groups):
            if mode == "move":
                cmd = ["movescu", "-S", "-aet", DCMTK_AET, "-aec", orthanc.aet, "-aem", STORESCP_AET]
            else:
                cmd = ["getscu", "-S", "-aet", DCMTK_AET, "-aec", orthanc.aet, "-od", str(out / f"g{n}")]
                (out / f"g{n}").mkdir()
            cmd += ["127.0.0.1", str(orthanc.dicom_port), *map(str, group)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dcmtk_env()))
        errors = [err for proc in procs if (err := proc.communicate(timeout=600)[1]) and proc.returncode != 0]
        seconds = time.perf_counter() - started
    finally:
        stop_process(storescp, timeout=10)  # reaped: its CPU (and its forks') counts below
    cpu = meter.read()
    if errors:
        raise bdicom.BenchError(f"{mode}scu failed: {errors[0][-1000:]}")
    count, nbytes = received(out)
    return {"seconds": seconds, "find_seconds": found - started, "pull_seconds": seconds - (found - started),
            "studies_found": len(queries), "instances": count, "bytes": nbytes, **cpu}  # fmt: skip


# --- samarkiv -------------------------------------------------------------------------------------


def samarkiv_pull(mode: str, orthanc: Orthanc, parallel: int, data: Path, serve_port: int, profile: Path | None,
                  split: bool = False) -> dict[str, Any]:  # fmt: skip
    """One migration into a fresh archive at ``data``. ``split``: plan everything first (timed apart),
    then pull (the "pull only" figure); otherwise one ``Runner.run()``, listing overlapping pulling."""
    from samarkiv.config import load_settings
    from samarkiv.core.archive import Archive
    from samarkiv.migrate.job import JobStore
    from samarkiv.migrate.runner import Runner

    server = Samarkiv(data, dicom_port=serve_port).start() if mode == "move" else None
    archive = Archive(load_settings(None, data=data))
    try:
        jobs = JobStore(archive.engine, archive.catalog.writer)
        options = dict(host="127.0.0.1", port=orthanc.dicom_port, called_aet=orthanc.aet, calling_aet=MIGRATOR_AET, mode=mode,
                       move_aet="SAMARKIV" if mode == "move" else None, associations=parallel, retries=2, backoff_seconds=0.5)  # fmt: skip
        job = jobs.create(f"bench-{mode}-{parallel}", "dimse", options)
        runner = Runner(archive, jobs, job)
        serve_profile = profile.with_name(profile.name.replace("profile-migrate", "profile-serve")) if profile and server else None
        with Profiler(os.getpid() if profile else None, profile), \
                Profiler(server.process.pid if serve_profile and server and server.process else None, serve_profile):
            meter = CpuMeter(orthanc, server.process.pid if server and server.process else None, own=True)
            started = time.perf_counter()
            if split:
                runner.plan_all()
            planned = time.perf_counter()
            result = runner.run(flush=False)
            seconds = time.perf_counter() - started
            cpu = meter.read()
            archive.flush_all()  # the write-back journal to blob files: `serve` does it when idle, `migrate run` on exit
            flush_seconds = time.perf_counter() - started - seconds
        migrated = result["instances"].get("migrated", 0)
        if result["studies"] != {"done": result["studies_total"]}:
            raise bdicom.BenchError(f"migration incomplete: {result}")
        return {"seconds": seconds, "plan_seconds": planned - started, "pull_seconds": seconds - (planned - started),
                "flush_seconds": flush_seconds, **cpu, "instances": migrated, "bytes": result["bytes_migrated"]}  # fmt: skip
    finally:
        archive.close()
        if server is not None:
            server.stop()


# --- the run --------------------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the median ``key`` (of an odd count; the upper middle otherwise), copied."""
    return dict(sorted(runs, key=lambda r: r[key])[len(runs) // 2])


def rates(r: dict[str, Any], seconds_key: str = "seconds") -> dict[str, float]:
    s = r[seconds_key]
    return {"instances_per_s": round(r["instances"] / s, 1), "mb_per_s": round(r["bytes"] / s / 1e6, 2)}


def measure(args: argparse.Namespace, orthanc: Orthanc, mode: str, parallel: int, expected: int, serve_port: int,
            storescp_port: int) -> dict[str, Any]:  # fmt: skip
    """One figure: ``--repeat`` interleaved runs of DCMTK movescu (the issue's peer), for C-GET also
    getscu (the like-for-like tool), and samarkiv (end to end, then split for the pull-only figure).

    Nothing is deleted until the whole run ends: on ext4, creating files soon after thousands were
    deleted costs about 0.8 ms of CPU each instead of 0.02-0.05 ms (the allocator passes over
    recently freed inodes, measured here), and each side would pay for the other's clean-up.
    Each run starts with nothing dirty in the page cache (sync(2) before it): samarkiv's group
    commits end in syncfs(2), which otherwise waited for the previous run's files as well (DCMTK's
    tools write without syncing; 0.3 GB of 0.5 MB CT objects left that to the next run)."""
    key = f"{mode}-{parallel}"
    work = args._work
    peers = ["move", "get"] if mode == "get" else ["move"]
    dcmtk_runs: dict[str, list[dict[str, Any]]] = {peer: [] for peer in peers}
    our_runs = []
    for rep in range(args.repeat):  # interleaved: every side sees the same load
        tag = f"{key}-{rep}"
        for peer in peers:
            log(f"{tag}: DCMTK findscu + {peer}scu")
            os.sync()
            dcmtk_runs[peer].append(dcmtk_pull(peer, orthanc, parallel, work / f"dcmtk-{peer}-{tag}", storescp_port))
        log(f"{tag}: samarkiv migrate")
        profile = args.results / f"profile-migrate-{key}-{args.stamp}.txt" if args.profile and rep == 0 else None
        os.sync()
        ours = samarkiv_pull(mode, orthanc, parallel, work / f"samarkiv-{tag}", serve_port, profile)
        os.sync()
        split = samarkiv_pull(mode, orthanc, parallel, work / f"samarkiv-{tag}-split", serve_port, None, split=True)
        ours["plan_seconds"], ours["pull_seconds"] = split["plan_seconds"], split["pull_seconds"]
        for r in [ours, split, *(runs[-1] for runs in dcmtk_runs.values())]:
            if r["instances"] != expected:
                raise bdicom.BenchError(f"{key}: {r['instances']} instances received, expected {expected}")
        our_runs.append(ours)
    entry = {"samarkiv": _figure(our_runs)}
    for peer, runs in dcmtk_runs.items():
        side = entry["dcmtk" if peer == "move" else "dcmtk_getscu"] = _figure(runs)
        side["ratio"] = round(entry["samarkiv"]["instances_per_s"] / side["instances_per_s"], 3)
        side["ratio_pull"] = round(entry["samarkiv"]["pull"]["instances_per_s"] / side["pull"]["instances_per_s"], 3)
    entry["ratio"], entry["ratio_pull"] = entry["dcmtk"]["ratio"], entry["dcmtk"]["ratio_pull"]
    ours, dcmtk = entry["samarkiv"], entry["dcmtk"]
    log(f"{key}: samarkiv {ours['instances_per_s']} inst/s vs DCMTK movescu {dcmtk['instances_per_s']} ({entry['ratio']:.0%})"
        + (f", getscu {entry['dcmtk_getscu']['instances_per_s']} ({entry['dcmtk_getscu']['ratio']:.0%})" if "dcmtk_getscu" in entry else ""))
    return entry


def _figure(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run of one side, its pull-only time the median of the runs', with its rates."""
    figure = _median(runs, "seconds")
    figure["pull_seconds"] = _median(runs, "pull_seconds")["pull_seconds"]
    figure["runs_seconds"] = [round(r["seconds"], 3) for r in runs]
    return {**figure, **rates(figure), "pull": rates(figure, "pull_seconds")}


def inner(args: argparse.Namespace) -> dict[str, Any]:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = args._work
    files = bdata.make_files(work / "files", label="MIG", studies=args.studies, per_study=args.per_study, series_per_study=2,
                             matrix=args.matrix)  # fmt: skip
    serve_port, storescp_port = free_port(), free_port()
    modalities = {
        "samarkiv": ["SAMARKIV", "127.0.0.1", serve_port], "migrator": [MIGRATOR_AET, "127.0.0.1", free_port()],
        "storescp": [STORESCP_AET, "127.0.0.1", storescp_port], "dcmtk": [DCMTK_AET, "127.0.0.1", free_port()],
    }  # fmt: skip
    results: dict[str, Any] = {}
    with Orthanc(work / "orthanc", extra={"DicomModalities": modalities}) as orthanc:
        log(f"filling Orthanc with {len(files.files)} instances ({files.total_bytes / 1e6:.1f} MB)")
        bdicom.send(orthanc.aet, orthanc.dicom_port, bdicom.split(files.files, 4))
        stats = orthanc.statistics()
        if int(stats["CountInstances"]) != len(files.files):
            raise bdicom.BenchError(f"Orthanc holds {stats['CountInstances']} instances, not {len(files.files)}")
        for mode in ("move", "get"):
            for parallel in (1, 4):
                key = f"{mode}-{parallel}"
                if not args.only or key in args.only:
                    results[key] = measure(args, orthanc, mode, parallel, len(files.files), serve_port, storescp_port)
    return {"instances": len(files.files), "bytes": files.total_bytes, "studies": args.studies, "repeat": args.repeat,
            "results": results}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    results = report["data"]["results"]
    lines = [
        f"# Migration from Orthanc: samarkiv vs DCMTK ({report['started']})",
        "",
        f"{report['data']['instances']} instances ({report['data']['bytes'] / 1e6:.1f} MB) in {report['data']['studies']} studies; "
        f"{report['environment']['orthanc']}; {report['environment']['dcmtk']}; {report['environment']['cpus']} CPUs.",
        "",
        "| pull | assocs | samarkiv inst/s | MB/s | DCMTK movescu inst/s | MB/s | samarkiv / movescu | target >= 80% "
        "| pull only: samarkiv | movescu | ratio | write-back after, s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        mode, parallel = key.split("-")
        s, d = r["samarkiv"], r["dcmtk"]
        lines.append(
            f"| C-{mode.upper()} | {parallel} | {s['instances_per_s']} | {s['mb_per_s']} | {d['instances_per_s']} | {d['mb_per_s']} | "
            f"{r['ratio']:.0%} | {'met' if r['ratio'] >= TARGET else 'NOT met'} | {s['pull']['instances_per_s']} | "
            f"{d['pull']['instances_per_s']} | {r['ratio_pull']:.0%} | {s['flush_seconds']:.2f} |"
        )
    gets = {key: r for key, r in results.items() if "dcmtk_getscu" in r}
    if gets:
        lines += ["", "C-GET like for like: the same samarkiv runs against DCMTK getscu (C-GET, files written, nothing indexed),",
                  "interleaved in the same run.", "",
                  "| assocs | samarkiv inst/s | DCMTK getscu inst/s | samarkiv / getscu | pull only: samarkiv | getscu | ratio |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for key, r in gets.items():
            s, g = r["samarkiv"], r["dcmtk_getscu"]
            lines.append(f"| {key.split('-')[1]} | {s['instances_per_s']} | {g['instances_per_s']} | {g['ratio']:.0%} | "
                         f"{s['pull']['instances_per_s']} | {g['pull']['instances_per_s']} | {g['ratio_pull']:.0%} |")  # fmt: skip
    lines += ["", "End to end (held against the target): samarkiv's whole run (C-FIND enumeration, IMAGE-level planning,",
              "pull, index commit) against DCMTK's findscu study list + movescu into storescp --fork (the issue's",
              "peer, for C-MOVE and C-GET alike) or getscu.",
              "Pull only: each side's pull phase, enumeration and planning timed apart.",
              "Write-back after: moving what the run left in the write-back journal to blob files, timed apart",
              "(none: C-GET's groups, and C-MOVE's in serve, go to blob files during the run).",
              f"Each figure is the median of {report['data'].get('repeat', 1)} runs, DCMTK and samarkiv interleaved.",
              "", "CPU seconds per 1,000 instances, end to end (the median runs): what each side spent, and what Orthanc",
              "spent serving it. On a machine with few cores the sum bounds the rate.", "",
              "| pull | assocs | samarkiv | movescu + storescp | getscu | Orthanc for samarkiv | for movescu | for getscu |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, r in results.items():
        mode, parallel = key.split("-")
        sides = [r["samarkiv"], r["dcmtk"], r.get("dcmtk_getscu")]
        cells = [_per_thousand(side, "cpu_seconds") for side in sides] + [_per_thousand(side, "orthanc_cpu_seconds") for side in sides]
        lines.append(f"| C-{mode.upper()} | {parallel} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _per_thousand(side: dict[str, Any] | None, key: str) -> str:
    return f"{1000 * side[key] / side['instances']:.2f}" if side else "-"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--per-study", type=int, default=25)
    parser.add_argument("--matrix", type=int, help="image rows and columns (default CT_small's 128: 39 KB; 512: a clinical CT slice, 0.5 MB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, both sides interleaved; the median is reported")
    parser.add_argument("--only", nargs="*", help="run only these of move-1 move-4 get-1 get-4")
    parser.add_argument("--profile", action="store_true", help="py-spy the migrating process during each samarkiv run")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--_inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_stamp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.stamp = args._stamp or datetime.now().strftime("%Y%m%d-%H%M%S")
    return args


def main() -> int:
    args = parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    if args._inner:
        data = inner(args)
        (args._work / "result.json").write_text(json.dumps(data))
        return 0
    for tool in ("findscu", "movescu", "getscu", "storescp", "storescu", "Orthanc", "unshare", "ip"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (DCMTK: apt-get install dcmtk; Orthanc: apt-get install orthanc)")
    with bench_flag(poll_seconds=30):
        return _outer(args)


def _outer(args: argparse.Namespace) -> int:
    """Run the measurements in a private network namespace, then write the report."""
    work = Path(tempfile.mkdtemp(prefix="samarkiv-migrate-bench-"))
    started = datetime.now(UTC)
    try:
        unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
        cmd = [*unshare, "--", sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--_inner", "--_work", str(work), "--_stamp", args.stamp]
        proc = subprocess.run(cmd, timeout=2400)
        if proc.returncode != 0 or not (work / "result.json").exists():
            log(f"the namespace run failed ({proc.returncode})")
            return 1
        data = json.loads((work / "result.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "migrate_vs_movescu",
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": {"orthanc": orthanc_version(), "dcmtk": bdicom.dcmtk_version(), "cpus": os.cpu_count()},
        "target": TARGET,
        "data": data,
    }
    out = args.results / f"migrate_vs_movescu-{args.stamp}"
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
