"""Start and stop the servers under test: ``samarkiv serve`` and Orthanc.

Every server is started with a parent-death signal, so that it goes away with
the benchmark even when the benchmark itself is killed.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def http_json(url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
        return json.load(response)


def http_text(url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> str:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
        return response.read().decode()


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
        )


def stop_process(process: subprocess.Popen | None, timeout: float = 30.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, and of its children, running or
    reaped (Linux /proc): the worker processes ``serve`` forks for migration associations."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (parent pid, clock ticks of it and its reaped children)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    if pid not in stats:
        return float("nan")
    children: dict[int, list[int]] = {}
    for child, (parent, _ticks) in stats.items():
        children.setdefault(parent, []).append(child)
    family, ticks = [pid], 0
    while family:
        member = family.pop()
        ticks += stats[member][1]
        family += children.get(member, [])
    return ticks / os.sysconf("SC_CLK_TCK")


def dcmtk_env() -> dict[str, str]:
    """DCMTK reads TCP_NODELAY from the environment (1: Nagle off)."""
    return {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Samarkiv:
    """A ``samarkiv serve`` process on loopback ports."""

    data: Path
    index_url: str | None = None
    aet: str = "SAMARKIV"
    log_level: str = "WARNING"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    name: str = "samarkiv"
    token: str | None = None  # an administrator's API token, made at the first start

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.data.name}-serve.log"

    @property
    def headers(self) -> dict[str, str]:
        """What authenticates a benchmark client to this server's HTTP APIs."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _make_token(self) -> str:
        """A bench user (administrator of the default organisation) and its API
        token, through the real CLI, as an operator would make one."""
        cmd = [sys.executable, "-m", "samarkiv", "users", "add", f"bench-{os.getpid()}-{self.http_port}",
               "--org", "default", "--role", "administrator", "--password-stdin", "--token", "--data", str(self.data)]  # fmt: skip
        if self.index_url:
            cmd += ["--index-url", self.index_url]
        out = subprocess.run(cmd, input=secrets.token_urlsafe(24) + "\n", capture_output=True, text=True, timeout=120)
        token = next((w for w in out.stdout.split() if w.startswith("smk_")), None)
        if out.returncode != 0 or token is None:
            raise RuntimeError(f"samarkiv users add failed: {out.stdout}{out.stderr}")
        return token

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (samarkiv's default ``dicomweb_root``), no trailing slash."""
        return f"http://127.0.0.1:{self.http_port}/dicomweb"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 120.0) -> "Samarkiv":
        self.data.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TCP_NODELAY": "1", "SAMARKIV_LOG_LEVEL": self.log_level}
        cmd = [
            sys.executable, "-m", "samarkiv", "serve",
            "--data", str(self.data),
            "--dicom-port", str(self.dicom_port),
            "--http-port", str(self.http_port),
            "--aet", self.aet,
        ]  # fmt: skip
        if self.index_url:
            cmd += ["--index-url", self.index_url]
        self.process = spawn(cmd, self.log, env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"samarkiv serve exited with {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
            if http_status(f"http://127.0.0.1:{self.http_port}/healthz") == 200:
                self.token = self.token or self._make_token()
                from .dicomweb import CREDENTIALS  # the DICOMweb benchmark's clients find it there

                CREDENTIALS[self.dicomweb_url] = self.headers
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"samarkiv serve not healthy after {timeout:.0f}s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> "Samarkiv":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


DICOMWEB_PLUGIN_PATHS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


def orthanc_dicomweb_plugin() -> str | None:
    """Path of Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb), or None."""
    candidates = [*DICOMWEB_PLUGIN_PATHS, *sorted(map(str, Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*")))]
    return next((c for c in candidates if Path(c).exists()), None)


def orthanc_version() -> str:
    try:
        out = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True, timeout=30).stdout
        return out.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


@dataclass
class Orthanc:
    """An Orthanc process with its storage and SQLite index in ``root``.

    Only ever started inside the benchmark's private network namespace: it
    listens on all addresses and has no option to bind loopback only.
    """

    root: Path
    aet: str = "ORTHANC"
    extra: dict[str, Any] = field(default_factory=dict)
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    name: str = "orthanc"
    dicomweb: bool = False  # load the DICOMweb plugin, root /dicom-web/

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def index_file(self) -> Path:
        return self.storage / "index"

    @property
    def log(self) -> Path:
        return self.root / "orthanc.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def config(self) -> dict[str, Any]:
        return {
            "Name": "samarkiv-bench",
            "StorageDirectory": str(self.storage),
            "IndexDirectory": str(self.storage),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            # Safe only because Orthanc runs in a private network namespace.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomCheckCalledAet": True,
            # Defaults, spelt out: fsync every stored file; Nagle off (HTTP
            # server; DICOM sockets get it from DCMTK's TCP_NODELAY variable).
            "SyncStorageArea": True,
            "TcpNoDelay": True,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "SaveJobs": False,
            **(self._dicomweb_config() if self.dicomweb else {}),
            **self.extra,
        }

    def _dicomweb_config(self) -> dict[str, Any]:
        plugin = orthanc_dicomweb_plugin()
        if plugin is None:
            raise RuntimeError("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")
        return {"Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False}}

    def start(self, timeout: float = 120.0) -> "Orthanc":
        self.storage.mkdir(parents=True, exist_ok=True)
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        self.process = spawn(["Orthanc", str(path)], self.log, dcmtk_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
            if http_status(f"http://127.0.0.1:{self.http_port}/system") == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc not up after {timeout:.0f}s:\n{self.log.read_text()[-4000:]}")

    def statistics(self) -> dict[str, Any]:
        return http_json(f"http://127.0.0.1:{self.http_port}/statistics")

    def stop(self) -> None:
        stop_process(self.process, timeout=60)

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Profiler:
    """``py-spy record`` attached to a server for the span of a ``with`` block.

    Writes collapsed stacks (``--format raw``), which ``bench/benchkit/profile.py``
    summarises and flamegraph tools read.
    """

    def __init__(self, pid: int | None, out: Path | None, rate: int = 200) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Profiler":
        if self.pid is None or self.out is None:
            return self
        py_spy = Path(sys.executable).parent / "py-spy"
        cmd = [str(py_spy), "record", "--pid", str(self.pid), "--format", "raw", "--rate", str(self.rate),
               "--nonblocking", "--subprocesses", "--output", str(self.out)]  # fmt: skip
        self.process = spawn(cmd, self.out.with_suffix(".log"))
        time.sleep(1.0)  # let py-spy attach before the measured work starts
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        assert self.out is not None
        if self.out.exists() and self.out.stat().st_size:
            self.out.with_suffix(".log").unlink(missing_ok=True)  # py-spy's chatter, kept only on failure
