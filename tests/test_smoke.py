"""The archive starts, answers C-ECHO and health, and stores what storescu sends."""

from __future__ import annotations

import json
import subprocess

import httpx

from conftest import dcmtk_env, require_tool, storescu


def test_echo_health_and_store(archive, sendable_files):
    require_tool("echoscu")
    echo = subprocess.run(
        ["echoscu", "-aec", archive.aet, "127.0.0.1", str(archive.dicom_port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=30,
    )  # fmt: skip
    assert echo.returncode == 0, echo.stderr
    assert httpx.get(f"{archive.http}/healthz", headers=archive.headers).json() == {"status": "ok"}

    sent = storescu(archive, *sendable_files[:5])
    assert sent.returncode == 0, sent.stderr
    stats = json.loads(archive.cli("stats", "--json").stdout)
    assert stats["instances"] == 5
    metrics = httpx.get(f"{archive.http}/metrics", headers=archive.headers).text
    assert 'samarkiv_stores_total{outcome="stored"} 5.0' in metrics
