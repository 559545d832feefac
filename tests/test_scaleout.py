"""Scale-out (issue 6): three ``samarkiv serve`` processes on one PostgreSQL
database and one SeaweedFS S3 bucket holding both tiers.

storescu sends into all three at once (a study to every node, the rest split
between them); the write-back journals of all three drain into the shared
bucket; a lifecycle move from the ``short`` to the ``long`` tier runs on all
nodes while C-FIND, QIDO-RS and WADO-URI requests go on; one node is killed
with SIGKILL while it holds claimed jobs. Then: every instance is stored
exactly once (one index row, one object in the bucket, nothing left over),
every lifecycle job was done once, and every instance is retrieved from
every node (the killed one restarted) by WADO-URI and by C-GET with the data
set byte-identical to what was sent (the File Meta group is the archive's).
"""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pydicom
import pytest
from _lifecycle import bucket_keys
from _seaweedfs import SeaweedS3, seaweedfs  # noqa: F401 (fixture)
from conftest import ArchiveProcess, dataset_bytes, storescu
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import create_engine, func, select, text
from test_find import findscu
from test_retrieve import getscu, received_files

from samarkiv.index.lifecycle_schema import lifecycle_jobs

STUDIES = 6
PER_STUDY = 6
SMALL = (512, 512)  # 512 KiB of pixels: journalled (inline) on the way in
LARGE = (1024, 768)  # 1.5 MiB: the blob-file path straight to S3


def _instance(folder: Path, study: str, series: str, patient: str, number: int, shape: tuple[int, int]) -> Path:
    """A synthetic CT image in Explicit VR Little Endian (served as stored by WADO-URI)."""
    rows, columns = shape
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.Modality = patient, f"SCALE^{patient}", "20150101", "CT"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, columns, 16, 12, 11
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    pixels = np.random.default_rng(number).integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _dataset(folder: Path) -> list[list[Path]]:
    """STUDIES studies of PER_STUDY small instances, the last instance of the
    last study large; a list of files per study."""
    folder.mkdir()
    studies = []
    for s in range(STUDIES):
        study, series = generate_uid(), generate_uid()
        studies.append([
            _instance(folder, study, series, f"P{s}", s * 100 + n,
                      LARGE if (s, n) == (STUDIES - 1, PER_STUDY - 1) else SMALL)
            for n in range(PER_STUDY)
        ])  # fmt: skip
    return studies


def _config(seaweed: SeaweedS3, bucket: str) -> str:
    tiers = "".join(
        f'[[tiers]]\nname = "{name}"\nkind = "s3"\nendpoint = "{seaweed.endpoint}"\nbucket = "{bucket}"\n'
        f'prefix = "{name}"\n\n'
        for name in ("short", "long")
    )
    # 1 MiB/s per node: a 512 KiB object takes about half a second, most of it
    # between the verified copy and the commit (the kill lands mid-move)
    return (
        "journal_idle_seconds = 1\nlifecycle_mib_per_second = 1\n\n" + tiers
        + '[[lifecycle]]\nname = "to-long"\nfrom = "short"\nto = "long"\nolder_than_days = 1\nage_by = "stored"\n'
    )


def _uid(path: Path) -> str:
    return pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID


def _wait(condition, what: str, timeout: float = 180) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _jobs_done(server: ArchiveProcess) -> float:
    metrics = httpx.get(f"{server.http}/metrics", headers=server.headers, timeout=10).text
    found = re.search(r'^samarkiv_lifecycle_jobs_total\{outcome="done"\} ([0-9.e+]+)$', metrics, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _wado(server: ArchiveProcess, path: Path) -> bytes:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    params = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID,
              "objectUID": ds.SOPInstanceUID, "contentType": "application/dicom"}  # fmt: skip
    response = httpx.get(f"{server.http}/wado", params=params, headers=server.headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


class Queries:
    """C-FIND, QIDO-RS and WADO-URI against the live nodes, in a thread, until stopped;
    every answer must be complete and every object byte-identical."""

    def __init__(self, nodes: list[ArchiveProcess], files: list[Path], out: Path) -> None:
        self.nodes, self.files, self.out = nodes, files, out
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.done = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Queries:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            node = self.nodes[n % len(self.nodes)]  # the list is changed before a node is killed
            try:
                self._one(node, n)
                self.done += 1
            except Exception as exc:  # noqa: BLE001 - reported by the test
                if node in self.nodes:
                    self.errors.append(f"{node.http}: {exc!r}")

    def _one(self, node: ArchiveProcess, n: int) -> None:
        studies = httpx.get(f"{node.http}/dicomweb/studies", headers=node.headers, timeout=30)
        assert studies.status_code == 200 and len(studies.json()) == STUDIES, studies.text[:300]
        if n % 3 == 0:
            keys = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=", "NumberOfStudyRelatedInstances="]
            status, responses, log = findscu(node, self.out / f"find{n}", keys)
            assert status == 0 and len(responses) == STUDIES, log[-500:]
            assert sum(int(r.NumberOfStudyRelatedInstances) for r in responses) == len(self.files)
        path = self.files[n % len(self.files)]
        assert dataset_bytes(_wado(node, path)) == dataset_bytes(path), f"WADO-URI of {path.name} differs"


class Node(ArchiveProcess):
    """An archive process whose HTTP requests carry ``ArchiveProcess.headers``, or,
    where those carry no credentials, Basic credentials of a user made here."""

    basic: ClassVar[dict[str, str]] = {}

    @property
    def headers(self) -> dict[str, str]:
        return super().headers or self.basic


def _basic_credentials(index_url: str) -> dict[str, str]:
    import base64

    from samarkiv.access.users import create_user
    from samarkiv.index.engine import create_index_engine

    password = f"scaleout-{uuid.uuid4().hex}"
    engine = create_index_engine(index_url)
    with engine.begin() as conn:
        create_user(conn, "scaleout", "default", ["administrator"], password=password)
    engine.dispose()
    return {"Authorization": "Basic " + base64.b64encode(f"scaleout:{password}".encode()).decode()}


@pytest.fixture
def nodes(tmp_path: Path, postgres_url: str, seaweedfs: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ArchiveProcess]]:  # noqa: F811
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)  # the serve processes read S3 credentials from the environment
    bucket = seaweedfs.create_bucket("scaleout")
    config = _config(seaweedfs, bucket)
    started = [Node(tmp_path / f"node{i}", postgres_url, extra_config=config) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:  # all at once: one migrates the new database, the others wait
        list(pool.map(lambda server: server.start(timeout=90), started))
    if not started[0].headers:
        Node.basic = _basic_credentials(postgres_url)
    started[0].bucket = bucket  # type: ignore[attr-defined]
    yield started
    for server in started:
        server.kill()


def test_three_nodes_one_postgres_one_bucket(nodes: list[ArchiveProcess], postgres_url: str, seaweedfs: SeaweedS3,  # noqa: F811
                                             tmp_path: Path) -> None:  # fmt: skip
    bucket = nodes[0].bucket  # type: ignore[attr-defined]
    studies = _dataset(tmp_path / "in")
    files = [path for study in studies for path in study]
    shared, rest = studies[0], [path for study in studies[1:] for path in study]

    # 1. storescu into all three at once: the first study to every node, the rest split
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda i: storescu(nodes[i], *shared, *rest[i::3]), range(3)))
    for result in results:
        assert result.returncode == 0 and "E:" not in result.stderr, result.stderr

    engine = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))

    def scalar(sql: str) -> int:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()

    # 2. the journals of all nodes drain into the shared first tier, each object once
    _wait(lambda: scalar("SELECT count(*) FROM inline_blobs") == 0, "the write-back journals to drain")
    assert scalar("SELECT count(*) FROM instances") == len(files)
    assert scalar("SELECT count(DISTINCT blob_key) FROM instances WHERE blob_key LIKE 'db/%'") == 0
    with engine.connect() as conn:
        keys = {row[0] for row in conn.execute(text("SELECT blob_key FROM instances"))}
    assert sorted(bucket_keys(seaweedfs, bucket)) == sorted(f"short/{key}" for key in keys)

    # 3. a day later (backdated: nothing was due while storing), plan the move
    #    once and let the schedulers of all three nodes work on it while queries go on
    with engine.begin() as conn:
        conn.execute(text("UPDATE instances SET stored_at = stored_at - interval '2 days'"))
    victim, survivors = nodes[2], nodes[:2]
    from samarkiv.config import load_settings
    from samarkiv.core.archive import Archive
    from samarkiv.lifecycle.mover import LifecycleRunner

    config = tmp_path / "planner.toml"
    config.write_text(victim.extra_config)
    planner = Archive(load_settings(config, data=tmp_path / "planner", index_url=postgres_url))
    LifecycleRunner(planner).plan()
    planner.close()
    assert scalar("SELECT count(*) FROM lifecycle_jobs") == len(files)

    live = list(nodes)
    with Queries(live, files, tmp_path / "queries") as queries:
        # 4. kill -9 the victim while it holds claimed jobs (mid-move)
        pid = victim.process.pid  # type: ignore[union-attr]
        mine = f"{socket.gethostname()}:{pid}:%"
        _wait(lambda: scalar(f"SELECT count(*) FROM lifecycle_jobs WHERE state = 'claimed' AND claimed_by LIKE '{mine}'") > 0,
              "the victim to claim jobs")  # fmt: skip
        live.remove(victim)
        victim.kill()
        held = scalar(f"SELECT count(*) FROM lifecycle_jobs WHERE state IN ('claimed', 'committed') AND claimed_by LIKE '{mine}'")
        assert held > 0
        # 5. the survivors finish everything, the victim's jobs included
        _wait(lambda: scalar("SELECT count(*) FROM lifecycle_jobs WHERE state <> 'done'") == 0,
              "the survivors to finish the move")  # fmt: skip
        time.sleep(1)  # a few more queries after the move
    assert not queries.errors, queries.errors[:5]
    assert queries.done > 0

    # every job done exactly once: the survivors' count plus what the victim finished
    by_victim = scalar(f"SELECT count(*) FROM lifecycle_jobs WHERE claimed_by LIKE '{mine}'")
    assert sum(_jobs_done(node) for node in survivors) + by_victim == len(files)
    with engine.connect() as conn:
        attempts = conn.execute(select(lifecycle_jobs.c.attempts, func.count()).group_by(lifecycle_jobs.c.attempts)).all()
    retried = sum(count for tries, count in attempts if tries > 1)
    assert max(tries for tries, _ in attempts) <= 2 and retried <= held  # only the victim's jobs ran again

    # 6. stored exactly once: one row per instance, one object per row, all on the long tier
    assert scalar("SELECT count(*) FROM instances") == len(files)
    with engine.connect() as conn:
        keys = {row[0] for row in conn.execute(text("SELECT blob_key FROM instances"))}
    assert len(keys) == len(files) and all(key.startswith("long:") for key in keys)
    assert sorted(bucket_keys(seaweedfs, bucket)) == sorted(f"long/{key[len('long:'):]}" for key in keys)
    engine.dispose()

    # 7. the victim comes back (its startup sweep must leave the others' objects alone),
    #    and every node serves every instance byte-identical
    victim.start(timeout=60)
    for node in nodes:
        for path in files:
            assert dataset_bytes(_wado(node, path)) == dataset_bytes(path), f"{node.http}: {path.name}"
        study = pydicom.dcmread(studies[-1][0], stop_before_pixels=True).StudyInstanceUID
        out = tmp_path / f"get-{node.dicom_port}"
        final = getscu(node, out, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")
        assert (final.status, final.completed, final.failed) == (0, PER_STUDY, 0), final.output
        received = received_files(out)
        assert set(received) == {_uid(p) for p in studies[-1]}
        for path in studies[-1]:
            assert dataset_bytes(received[_uid(path)]) == dataset_bytes(path)
    assert sorted(bucket_keys(seaweedfs, bucket)) == sorted(f"long/{key[len('long:'):]}" for key in keys)


def test_journal_movers_on_one_postgres_share_the_journal(tmp_path: Path, postgres_url: str) -> None:
    """Two archives on one PostgreSQL and one (shared) first tier: a batch one
    mover has claimed is skipped by the other (FOR UPDATE SKIP LOCKED), and when
    the first dies after writing its blobs but before its commit, its rows go
    back to the journal and the other moves them to the same keys: every
    object moved once, none lost, no orphan."""
    from _lifecycle import make_sample, store

    from samarkiv.config import load_settings
    from samarkiv.core.archive import Archive

    config = tmp_path / "shared.toml"
    config.write_text(f'[[tiers]]\nname = "short"\npath = "{tmp_path / "shared"}"\n')
    a, b = (Archive(load_settings(config, data=tmp_path / name, index_url=postgres_url)) for name in ("a", "b"))
    samples = [make_sample("CT_small.dcm", "20150101") for _ in range(10)]
    store(a, *samples)
    assert a.catalog.inline_backlog()[0] == 10

    claimed, release = threading.Event(), threading.Event()
    write = a.blobs.put_many

    def dies_before_commit(items):  # type: ignore[no-untyped-def]
        write(items)  # the blobs are written ...
        claimed.set()
        release.wait(30)
        raise ConnectionResetError("node a died")  # ... but the move is never committed

    a.blobs.put_many = dies_before_commit  # type: ignore[method-assign]
    failed: list[BaseException] = []

    def node_a() -> None:
        try:
            a.flush_inline(batch=4)
        except BaseException as exc:  # noqa: BLE001
            failed.append(exc)

    thread = threading.Thread(target=node_a)
    thread.start()
    assert claimed.wait(30)
    assert b.flush_inline(batch=100) == 6  # a's four are locked: skipped, not moved twice
    assert b.catalog.inline_backlog()[0] == 4
    release.set()
    thread.join(30)
    assert len(failed) == 1 and isinstance(failed[0], ConnectionResetError)
    assert b.catalog.inline_backlog()[0] == 4  # rolled back: still journalled, nothing lost
    assert b.flush_inline(batch=100) == 4
    assert b.flush_inline(batch=100) == 0

    keys = {b.catalog.instance(s.uid).blob_key for s in samples}
    assert len(keys) == 10 and not any(key.startswith("db/") for key in keys)
    assert sorted(info.key for info in b.blobs.list()) == sorted(keys)  # a's writes were reused: no orphan
    for sample in samples:
        with b.open_instance(b.catalog.instance(sample.uid)) as f:
            assert f.read() == sample.data
    a.close()
    b.close()
