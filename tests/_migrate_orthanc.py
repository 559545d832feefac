"""Driver for tests/test_migrate_orthanc.py: Orthanc as a legacy archive, migrated into samarkiv.

Runs inside a private network namespace (``unshare -n``; Orthanc has no bind
option and listens on every address): brings loopback up, starts Orthanc
(Debian package, with the orthanc-dicomweb plugin), uploads real sample
objects over its REST API, then for each scenario migrates everything into a
fresh samarkiv (``dimse-move`` into a running ``samarkiv serve``,
``dimse-get`` and ``dicomweb`` into the migrating process), verifies the job
against the source and compares what samarkiv stored with what was uploaded
(SHA-256 of the dataset bytes after the File Meta). Prints one JSON object.

    unshare -n -- python tests/_migrate_orthanc.py --work DIR [--scenarios dimse-move,dimse-get,dicomweb]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "bench")]

import httpx  # noqa: E402

from _dcmqrscp import legacy_files  # noqa: E402
from benchkit.servers import Orthanc, Samarkiv  # noqa: E402

SCENARIOS = ("dimse-move", "dimse-get", "dicomweb")
MIGRATOR_AET = "SAMARKIV-MIG"


def dataset_digest(data: bytes) -> str:
    from samarkiv.core.structure import inspect_buffer

    return hashlib.sha256(data[inspect_buffer(data).dataset_offset :]).hexdigest()


def cli(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "samarkiv", *args, "--data", str(data)], capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise RuntimeError(f"samarkiv {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def upload(orthanc: Orthanc, files: list[Path]) -> dict[str, str]:
    """POST every file to Orthanc's REST API; SOP Instance UID -> dataset digest."""
    from pydicom import dcmread

    expected = {}
    with httpx.Client(timeout=60) as http:
        for path in files:
            data = path.read_bytes()
            response = http.post(f"http://127.0.0.1:{orthanc.http_port}/instances", content=data)
            response.raise_for_status()
            expected[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = dataset_digest(data)
    return expected


def compare(data: Path, expected: dict[str, str]) -> dict[str, Any]:
    """What samarkiv holds against what was uploaded to the source."""
    from samarkiv.config import load_settings
    from samarkiv.core.archive import Archive

    archive = Archive(load_settings(None, data=data))
    try:
        stored = archive.catalog.instances_by_uid(list(expected))
        differ = []
        for uid, instance in stored.items():
            with archive.open_instance(instance) as f:
                if dataset_digest(f.read()) != expected[uid]:
                    differ.append(uid)
        return {
            "expected": len(expected),
            "held": archive.catalog.counts()["instances"],
            "missing": sorted(set(expected) - set(stored)),
            "differ": differ,
        }
    finally:
        archive.close()


def scenario(name: str, orthanc: Orthanc, work: Path, expected: dict[str, str]) -> dict[str, Any]:
    data = work / name
    common = ["--associations", "4", "--retries", "3", "--backoff", "0.5"]
    server = None
    if name == "dicomweb":
        source = ["--source", "dicomweb", "--url", orthanc.dicomweb_url, "--page-size", "5"]
    else:
        mode = name.removeprefix("dimse-")
        source = ["--source", "dimse", "--host", "127.0.0.1", "--port", str(orthanc.dicom_port), "--called-aet", orthanc.aet,
                  "--calling-aet", MIGRATOR_AET, "--mode", mode]  # fmt: skip
        if mode == "move":
            server = Samarkiv(data, dicom_port=orthanc.extra["DicomModalities"]["samarkiv"][2]).start()
            source += ["--move-aet", server.aet]
    try:
        cli(data, "migrate", "add", name, *source, *common)
        run = cli(data, "migrate", "run", name, "--no-progress", check=False)
        status = json.loads(cli(data, "migrate", "status", name, "--json").stdout)
        verify = cli(data, "migrate", "verify", name, check=False)
        rerun = cli(data, "migrate", "run", name, "--no-progress", check=False)
    finally:
        if server is not None:
            server.stop()
    return {
        "run_exit": run.returncode, "run_stderr": run.stderr[-2000:], "status": status,
        "verify_exit": verify.returncode, "verify": verify.stdout.strip()[-2000:], "rerun_exit": rerun.returncode,
        **compare(data, expected),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--patients", type=int, default=2)
    args = parser.parse_args()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from benchkit.servers import free_port

    samarkiv_port = free_port()
    source = args.work / "source"
    source.mkdir(parents=True)
    files = legacy_files(source, patients=args.patients)
    modalities = {"samarkiv": ["SAMARKIV", "127.0.0.1", samarkiv_port], "migrator": [MIGRATOR_AET, "127.0.0.1", free_port()]}
    results: dict[str, Any] = {}
    with Orthanc(args.work / "orthanc", dicomweb=True, extra={"DicomModalities": modalities}) as orthanc:
        expected = upload(orthanc, files)
        results["uploaded"] = len(expected)
        for name in args.scenarios.split(","):
            try:
                results[name] = scenario(name, orthanc, args.work, expected)
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with it
                results[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
