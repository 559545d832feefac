"""A DICOMweb source that wants a bearer token: samarkiv migrating from another
samarkiv (QIDO-RS + WADO-RS), the token read from an environment variable at
run time and never stored with the job. Orthanc as a DICOMweb source is in
test_migrate_orthanc.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _dcmqrscp import legacy_files
from conftest import ArchiveProcess, dataset_bytes, storescu, stored_object


def _status(server, name: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(server.cli("migrate", "status", name, "--json").stdout)


def test_bearer_token_from_the_environment(archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    files = legacy_files(tmp_path / "legacy", patients=1)[:16]  # one study, two series
    result = storescu(archive, *files)
    assert result.returncode == 0, result.stderr
    added = archive.cli("users", "add", "migrator", "--org", "default", "--role", "administrator", "--token", check=False)
    if added.returncode != 0:
        pytest.skip(f"user administration not available: {added.stderr.strip()[:200]}")
    token = next(line.split(": ", 1)[1] for line in added.stdout.splitlines() if line.startswith("token (shown once)"))

    target = ArchiveProcess(tmp_path / "target", f"sqlite:///{tmp_path / 'target.sqlite'}")
    target.cli(
        "migrate", "add", "from-web", "--source", "dicomweb", "--url", f"{archive.http}/dicomweb",
        "--token-env", "SOURCE_TOKEN", "--page-size", "1", "--associations", "2", "--retries", "1", "--backoff", "0.1",
    )  # fmt: skip
    monkeypatch.delenv("SOURCE_TOKEN", raising=False)
    missing = target.cli("migrate", "run", "from-web", "--no-progress", check=False)
    assert missing.returncode == 1 and "SOURCE_TOKEN" in missing.stderr and "Traceback" not in missing.stderr
    monkeypatch.setenv("SOURCE_TOKEN", "smk_wrong")
    wrong = target.cli("migrate", "run", "from-web", "--no-progress", check=False)
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr and "Traceback" not in wrong.stderr

    monkeypatch.setenv("SOURCE_TOKEN", token)
    target.cli("migrate", "run", "from-web", "--no-progress", "--refresh")
    assert _status(target, "from-web")["instances"] == {"migrated": len(files)}
    verified = target.cli("migrate", "verify", "from-web")
    assert "verified 1/1 studies" in verified.stdout and "0 missing, 0 mismatched" in verified.stdout

    from pydicom import dcmread
    from sqlalchemy import select

    from samarkiv.config import load_settings
    from samarkiv.core.archive import Archive
    from samarkiv.index.migrate_schema import migration_jobs

    held = Archive(load_settings(None, data=target.data, index_url=target.index_url))
    try:
        uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
        stored = held.catalog.instances_by_uid(list(uids))
        assert set(stored) == set(uids)
        assert all(dataset_bytes(stored_object(held, stored[u])) == dataset_bytes(f) for u, f in uids.items())
        with held.engine.connect() as conn:
            options = conn.execute(select(migration_jobs.c.options)).scalar_one()
        assert token not in options and json.loads(options)["token_env"] == "SOURCE_TOKEN"  # the secret is never stored
    finally:
        held.close()
