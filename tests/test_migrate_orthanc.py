"""Orthanc (Debian package) as a legacy archive: migrated over DIMSE (C-MOVE, C-GET)
and DICOMweb (orthanc-dicomweb plugin), byte-identical, verified, idempotent.

Orthanc cannot bind to loopback only, so the whole scenario runs in a private
network namespace: tests/_migrate_orthanc.py, launched under ``unshare -n``,
prints JSON results that this test asserts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench"))

from benchkit.servers import orthanc_dicomweb_plugin  # noqa: E402


@pytest.fixture(scope="module")
def orthanc_results(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    require(shutil.which("Orthanc") is not None, "Orthanc not installed (apt-get install orthanc)")
    require(orthanc_dicomweb_plugin() is not None, "Orthanc's DICOMweb plugin not installed (apt-get install orthanc-dicomweb)")
    require(shutil.which("unshare") is not None and shutil.which("ip") is not None, "unshare/ip not installed (util-linux, iproute2)")
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
    work = tmp_path_factory.mktemp("orthanc-migration")
    result = subprocess.run(
        [*unshare, "--", sys.executable, str(HERE / "_migrate_orthanc.py"), "--work", str(work / "w")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if result.returncode != 0 and "unshare" in result.stderr and "Operation not permitted" in result.stderr:
        require(False, f"cannot make a network namespace here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("scenario", ["dimse-move", "dimse-get", "dicomweb"])
def test_orthanc_migrates_exactly_and_byte_identical(orthanc_results, scenario: str) -> None:  # type: ignore[no-untyped-def]
    uploaded = orthanc_results["uploaded"]
    result = orthanc_results[scenario]
    assert "error" not in result, result.get("error")
    assert result["run_exit"] == 0, result["run_stderr"]
    assert result["status"]["studies"] == {"done": 6}
    assert result["status"]["instances"] == {"migrated": uploaded}
    # exactly the source's instances, each byte-identical (dataset after the File Meta) to what Orthanc was given
    assert result["expected"] == result["held"] == uploaded
    assert result["missing"] == [] and result["differ"] == []
    # verification re-lists every study and re-fetches every object from Orthanc
    assert result["verify_exit"] == 0
    assert "verified 6/6 studies" in result["verify"] and "0 missing, 0 mismatched, 0 series with other counts" in result["verify"]
    assert result["rerun_exit"] == 0  # idempotent: nothing left to pull
