"""DCMTK's dcmqrscp as a legacy archive on 127.0.0.1, filled with real samples.

The storage area holds a few hundred instances: re-UID'd copies of pydicom
sample files (uncompressed, Explicit VR Little Endian as the samples are),
spread over several patients, studies, series and study dates, registered in
dcmqrscp's index with DCMTK's ``dcmqridx``. Tests only read from it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from conftest import free_port, require_tool

LEGACY_AET = "LEGACY"
TEMPLATES = (
    "CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "SC_rgb.dcm",
    "SC_rgb_small_odd.dcm", "color-pl.dcm", "SC_ybr_full_uncompressed.dcm",  # SR and some others: DCMTK re-encodes sequences
)  # fmt: skip
PATIENTS, STUDIES_PER_PATIENT, SERIES_PER_STUDY, INSTANCES_PER_SERIES = 6, 3, 2, 8


def _template_paths() -> list[Path]:
    import pydicom
    from pydicom.data import get_testdata_file

    paths = []
    for name in TEMPLATES:
        found = get_testdata_file(name)
        if found is None:
            local = Path(pydicom.__file__).parent / "data" / "test_files" / name
            found = str(local) if local.exists() else None
        if found is not None:
            paths.append(Path(found))
    return paths


def fill_storage(storage: Path) -> list[Path]:
    """Write the legacy archive's objects into ``storage`` and index them for dcmqrscp; return their paths."""
    written = legacy_files(storage)
    subprocess.run(["dcmqridx", str(storage), *map(str, written)], check=True, capture_output=True, timeout=300)
    return written


def legacy_files(storage: Path, patients: int = PATIENTS) -> list[Path]:
    """Write a legacy archive's objects (re-UID'd real samples) into ``storage``; return their paths."""
    templates = _template_paths()
    if len(templates) < 5:
        pytest.skip("pydicom-data sample files not installed")
    storage.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    t = 0
    for p in range(patients):
        for s in range(STUDIES_PER_PATIENT):
            study_uid = generate_uid()
            study_date = f"2019{(p * STUDIES_PER_PATIENT + s) % 12 + 1:02d}{s * 7 + 3:02d}"
            for r in range(SERIES_PER_STUDY):
                template = templates[t % len(templates)]
                t += 1
                series_uid = generate_uid()
                for i in range(INSTANCES_PER_SERIES):
                    ds = dcmread(template)
                    uid = generate_uid()
                    ds.PatientID = f"LEG{p:03d}"
                    ds.PatientName = f"Legacy^Patient{p}"
                    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
                    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
                    ds.StudyDate, ds.StudyID, ds.AccessionNumber = study_date, f"S{s}", f"A{p}{s}"
                    ds.SeriesNumber, ds.InstanceNumber = r + 1, i + 1
                    ds.InstitutionName = "Old Hospital (typo)"
                    for tag in [e.tag for e in ds if e.tag.element == 0 or e.tag == 0xFFFCFFFC]:
                        del ds[tag]  # group lengths, trailing padding: DCMTK drops them on the wire
                    path = storage / f"{uid}.dcm"
                    ds.save_as(path, enforce_file_format=True)
                    written.append(path)
    return written


@dataclass
class Dcmqrscp:
    """One running dcmqrscp serving a storage area (read-only)."""

    storage: Path
    files: list[Path]
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)  # C-MOVE destinations
    aet: str = LEGACY_AET
    port: int = field(default_factory=free_port)
    max_associations: int = 16
    single_process: bool = False  # one association at a time, the others wait; else fork and refuse beyond the limit
    process: subprocess.Popen | None = None

    def start(self, workdir: Path) -> None:
        hosts = "\n".join(f"peer{i} = ({aet}, {host}, {port})" for i, (aet, (host, port)) in enumerate(self.peers.items()))
        config = workdir / f"dcmqrscp-{self.port}.cfg"
        config.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 65536\nMaxAssociations = {self.max_associations}\n\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n\nVendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{self.aet} {self.storage} R (1000, 1024mb) ANY\nAETable END\n"
        )
        log = open(workdir / f"dcmqrscp-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            ["dcmqrscp", "-c", str(config), "--single-process" if self.single_process else "--fork"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own process group: freeze()
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dcmqrscp exited: {(workdir / f'dcmqrscp-{self.port}.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("dcmqrscp did not start")

    def freeze(self) -> None:
        """SIGSTOP dcmqrscp and the children it forked (one per association): the kernel still
        accepts connections into the listen backlog, but nothing answers, mid-transfer included."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT the process group (harmless when it is not stopped)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def children(self) -> list[int]:
        """The pids of the children dcmqrscp forked, i.e. its associations in progress."""
        assert self.process is not None
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid:  # field 4: ppid
                    found.append(int(entry.name))
        return found

    def stop(self) -> None:
        self.thaw()  # never leave anything stopped
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def legacy_storage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """The filled storage area, made once per session."""
    require_tool("dcmqrscp", "dcmqridx")
    storage = tmp_path_factory.mktemp("legacy") / "storage"
    storage.mkdir()
    return storage, fill_storage(storage)


@pytest.fixture
def start_legacy(legacy_storage, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Factory: start dcmqrscp on the shared storage with the given move peers."""
    started: list[Dcmqrscp] = []

    def start(peers: dict[str, tuple[str, int]] | None = None, max_associations: int = 16) -> Dcmqrscp:
        storage, files = legacy_storage
        server = Dcmqrscp(storage, files, dict(peers or {}), max_associations=max_associations)
        server.start(tmp_path)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
