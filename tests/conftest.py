"""Shared test fixtures: real servers, real DCMTK peers, real sample data.

Tests that need a tool or service skip where it is absent, except under
CI=true, where .ci/run must have provided it and its absence is a failure.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("SAMARKIV_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def require(condition: bool, reason: str) -> None:
    """Skip (or, in CI, fail) when a needed tool or service is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


def require_tool(*names: str) -> None:
    for name in names:
        require(shutil.which(name) is not None, f"{name} not installed (apt-get install dcmtk)")


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (net.ipv4.ip_local_port_range)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now, below the ephemeral range, never handed out before in this run:
    a port from that range (what binding port 0 gives) can be taken by any outgoing connection
    before the server binds it, which made a test's serve fail with "Address already in use"
    under parallel runs. Each xdist worker draws from its own slice of the range, and one
    worker never draws a port twice (a serve once got the same port for DICOM and HTTP)."""
    low = _ephemeral_low()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    span = max(1, (low - 10000) // workers)
    first = 10000 + worker * span
    for _ in range(200):
        port = random.randrange(first, first + span) if low > 10001 else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


# --- databases ---------------------------------------------------------------------


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own, dropped afterwards."""
    require(_postgres_available(), f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    import psycopg

    name = f"samarkiv_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return request.getfixturevalue("postgres_url")


# --- sample data -------------------------------------------------------------------


def _sample_dirs() -> list[Path]:
    dirs = []
    try:
        import data_store  # pydicom-data

        dirs.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    import pydicom

    dirs.append(Path(pydicom.__file__).parent / "data" / "test_files")
    return dirs


@pytest.fixture(scope="session")
def sample_files() -> list[Path]:
    """Real sample DICOM files that are valid to store, one per SOP Instance UID."""
    import pydicom.filereader

    from samarkiv.core.ingest import RejectedDataset, parse_instance

    chosen: dict[str, Path] = {}
    for folder in _sample_dirs():
        for path in sorted(folder.glob("*.dcm")):
            try:
                parsed = parse_instance(path)
                meta = pydicom.filereader.read_file_meta_info(path)
            except (RejectedDataset, Exception):  # noqa: BLE001
                continue
            if meta.get("MediaStorageSOPInstanceUID") != parsed.sop_instance_uid:
                continue  # an inconsistent Part 10 file: rightly rejected
            chosen.setdefault(parsed.sop_instance_uid, path)
    require(len(chosen) >= 20, "pydicom-data sample files not installed")
    return list(chosen.values())


@pytest.fixture(scope="session")
def sendable_files(sample_files: list[Path]) -> list[Path]:
    """Sample files that DCMTK's storescu can send as they are."""
    return storescu_sendable(sample_files)


# --- a running archive ---------------------------------------------------------------


@dataclass
class ArchiveProcess:
    """A ``samarkiv serve`` subprocess on free loopback ports."""

    data: Path
    index_url: str
    aet: str = "SAMARKIV"
    extra_config: str = ""
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    _headers: dict[str, str] | None = field(default=None, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that authenticate a test client to this archive: a user
        (administrator of the default organisation, else of the first configured
        one) and an API token, made once through the real CLI."""
        if self._headers is None:
            token = self.add_user(f"test-{uuid.uuid4().hex[:8]}", "administrator")[1]
            self._headers = {"Authorization": f"Bearer {token}"}
        return self._headers

    def owns(self, url: str) -> bool:
        return url == self.http or url.startswith(self.http + "/")

    def home_organisation(self) -> str:
        import tomllib

        config = tomllib.loads(self.extra_config)
        if config.get("default_organisation"):
            return str(config["default_organisation"])
        if config.get("accept_unknown_aets", True) is not False:
            return "default"
        return str(config["organisations"][0]["code"])

    def add_user(self, username: str, *roles: str, org: str | None = None, password: str = "test-password-1") -> tuple[str, str]:
        """Add a user with ``password`` and an API token through the CLI: (username, token)."""
        role_args = [arg for role in roles or ("administrator",) for arg in ("--role", role)]
        result = subprocess.run(
            [sys.executable, "-m", "samarkiv", "users", "add", username, "--org", org or self.home_organisation(),
             *role_args, "--password-stdin", "--token", "--data", str(self.data), "--index-url", self.index_url],
            input=password + "\n", capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if result.returncode != 0:
            raise AssertionError(f"samarkiv users add failed:\n{result.stdout}\n{result.stderr}")
        token = next(w for w in result.stdout.split() if w.startswith("smk_"))
        return username, token

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.data.name}-serve.log"

    def start(self, timeout: float = 30) -> None:
        config = self.data.parent / f"{self.data.name}.toml"
        config.write_text(self.extra_config)
        env = {**os.environ, "TCP_NODELAY": "1", "SAMARKIV_LOG_LEVEL": "INFO"}
        cmd = [
            sys.executable, "-m", "samarkiv", "serve",
            "--config", str(config),
            "--data", str(self.data),
            "--index-url", self.index_url,
            "--dicom-port", str(self.dicom_port),
            "--http-port", str(self.http_port),
            "--aet", self.aet,
        ]  # fmt: skip
        self.process = subprocess.Popen(cmd, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        _STARTED[self.http] = self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.http}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve did not become healthy:\n{self.log.read_text()}")

    def stop(self, timeout: float = 30) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a ``samarkiv`` subcommand against this archive's data and index."""
        return run_cli(*args, "--data", str(self.data), "--index-url", self.index_url, check=check)


_STARTED: dict[str, ArchiveProcess] = {}


def auth_headers(url: str) -> dict[str, str]:
    """The authenticating headers of the archive (started in this process) serving ``url``,
    for helpers that are handed a URL rather than the archive."""
    for base, server in _STARTED.items():
        if server.owns(url):
            return server.headers
    raise AssertionError(f"no archive started here serves {url}")


def audit_records(index_url: str, action: str) -> list[dict]:
    """The audit records of ``action`` in the index at ``index_url``, oldest first."""
    from sqlalchemy import select

    from samarkiv.index.audit_schema import audit_events
    from samarkiv.index.engine import create_index_engine

    engine = create_index_engine(index_url)
    try:
        with engine.connect() as conn:
            query = select(audit_events).where(audit_events.c.action == action).order_by(audit_events.c.seq)
            return [dict(row._mapping) for row in conn.execute(query)]
    finally:
        engine.dispose()


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "samarkiv", *args], capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"samarkiv {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def make_archive(tmp_path: Path, index_url: str) -> Iterator:
    """Factory for running archives on this test's index (SQLite or PostgreSQL)."""
    started: list[ArchiveProcess] = []

    def make(extra_config: str = "", start: bool = True, name: str = "archive") -> ArchiveProcess:
        server = ArchiveProcess(tmp_path / name, index_url, extra_config=extra_config)
        if start:
            server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def archive(make_archive) -> ArchiveProcess:  # type: ignore[no-untyped-def]
    """A running archive on the embedded defaults (and once on PostgreSQL)."""
    return make_archive()


# storescu proposes uncompressed syntaxes unless told which compressed one to offer.
STORESCU_PROPOSAL = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.100": "-xm",
    "1.2.840.10008.1.2.4.101": "-xh",
    "1.2.840.10008.1.2.4.102": "-xn",
    "1.2.840.10008.1.2.4.103": "-xl",
    "1.2.840.10008.1.2.4.107": "-x4",
    "1.2.840.10008.1.2.4.108": "-x5",
}


def transfer_syntax_of(path: Path) -> str:
    from samarkiv.core.structure import inspect_file

    return inspect_file(path).transfer_syntax_uid


def _dcmtk_reads_uids(path: Path) -> bool:
    """DCMTK finds the SOP Class and Instance UIDs as UI elements (some samples
    are too odd for it, and storescu then skips them)."""
    result = subprocess.run(
        ["dcmdump", "-q", "+P", "SOPClassUID", "+P", "SOPInstanceUID", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return result.returncode == 0 and result.stdout.count(" UI ") == 2


def storescu_sendable(files: list[Path]) -> list[Path]:
    """The files storescu can read and send without converting them."""
    require_tool("dcmdump")
    return [f for f in files if transfer_syntax_of(f) in STORESCU_PROPOSAL and _dcmtk_reads_uids(f)]


def storescu(server: ArchiveProcess, *files: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with DCMTK's storescu, each in its own transfer syntax.

    One storescu run per transfer syntax; returns the last failing run, or
    the last run when all succeeded.
    """
    require_tool("storescu")
    groups: dict[str, list[Path]] = {}
    for f in files:
        ts = transfer_syntax_of(f)
        if ts not in STORESCU_PROPOSAL:
            raise ValueError(f"storescu cannot propose {ts} for {f}")
        groups.setdefault(ts, []).append(f)
    result: subprocess.CompletedProcess[str] | None = None
    failed: subprocess.CompletedProcess[str] | None = None
    for ts, group in groups.items():
        result = subprocess.run(
            ["storescu", "-R", "--no-halt", STORESCU_PROPOSAL[ts], "-aec", server.aet, *extra,
             "127.0.0.1", str(server.dicom_port), *map(str, group)],
            capture_output=True, text=True, env=dcmtk_env(), timeout=300,
        )  # fmt: skip
        if result.returncode != 0 or "E:" in result.stderr:
            failed = result
    assert result is not None, "no files to send"
    return failed or result


def dataset_bytes(source: Path | bytes) -> bytes:
    """The bytes after the File Meta Information group (what travels on the wire)
    of a Part 10 file, or of one held in memory."""
    from samarkiv.core.structure import inspect_buffer

    data = source if isinstance(source, bytes) else source.read_bytes()
    return data[inspect_buffer(data).dataset_offset :]


def stored_object(archive, stored) -> bytes:  # type: ignore[no-untyped-def]
    """The stored Part 10 object, wherever the archive keeps it (journal or blob file)."""
    with archive.open_instance(stored) as f:
        return f.read()
