"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3) against DCMTK's movescu, getscu and
storescp, and pynetdicom where DCMTK has no tool (C-CANCEL)."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from conftest import dataset_bytes, dcmtk_env, free_port, require_tool, stored_object, storescu, transfer_syntax_of

ALL_TRANSFER_SYNTAXES = list(AllTransferSyntaxes)
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}


# --- sample data ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    path: Path
    patient_id: str
    study: str
    series: str
    sop_instance: str
    transfer_syntax: str

    @property
    def compressed(self) -> bool:
        return self.transfer_syntax not in UNCOMPRESSED


@pytest.fixture(scope="module")
def samples(sendable_files: list[Path]) -> list[Sample]:
    out = []
    for path in sendable_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(Sample(
            path, str(ds.get("PatientID", "")), ds.StudyInstanceUID, ds.SeriesInstanceUID,
            ds.SOPInstanceUID, transfer_syntax_of(path),
        ))  # fmt: skip
    return out


def group(samples: list[Sample], key: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(getattr(s, key), []).append(s)
    return out


def size(samples: list[Sample]) -> int:
    return sum(s.path.stat().st_size for s in samples)


def require_samples(condition: object, what: str) -> None:
    if not condition:
        pytest.skip(f"the sample data has no {what}")


@dataclass
class Selection:
    """Small real samples, chosen by what they are, for every retrieve level."""

    study: list[Sample]  # a whole study with compressed and uncompressed instances
    series: list[Sample]  # a whole series of two or more, in another study
    patient_id: str  # a patient with a compressed instance
    images: list[Sample]  # big endian, deflated and implicit VR instances (those available)
    implicit: list[Sample]  # implicit VR little endian instances
    stored: list[Sample] = field(default_factory=list)  # all of the above

    def of_patient(self) -> list[Sample]:
        return [s for s in self.stored if s.patient_id == self.patient_id]


@pytest.fixture(scope="module")
def selection(samples: list[Sample]) -> Selection:
    small = [s for s in samples if s.path.stat().st_size < 1_000_000]
    # Studies filed under one patient only, so that storing them raises no conflict.
    studies = {uid: g for uid, g in group(small, "study").items() if len({s.patient_id for s in g}) == 1}
    usable = [s for g in studies.values() for s in g]
    mixed = [g for g in studies.values() if any(s.compressed for s in g) and sum(not s.compressed for s in g) >= 2]
    require_samples(mixed, "study with compressed and uncompressed instances")
    study = max(mixed, key=len)
    series = [g for g in group(usable, "series").values() if len(g) >= 2 and g[0].study != study[0].study]
    require_samples(series, "second series of several instances")
    patients = [
        g for pid, g in group(usable, "patient_id").items()
        if pid and pid != study[0].patient_id and any(s.compressed for s in g)
    ]  # fmt: skip
    require_samples(patients, "patient with a compressed instance")
    by_syntax = group(usable, "transfer_syntax")
    images = [
        min(by_syntax[ts], key=lambda s: s.path.stat().st_size)
        for ts in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2")
        if ts in by_syntax
    ]
    implicit = sorted(by_syntax.get("1.2.840.10008.1.2", []), key=lambda s: s.path.stat().st_size)[:2]
    require_samples(len(images) >= 2 and implicit, "big endian, deflated and implicit VR instances")
    chosen = Selection(study, min(series, key=size), min(patients, key=size)[0].patient_id, images, implicit)
    patient = [s for s in usable if s.patient_id == chosen.patient_id]
    stored = {s.sop_instance: s for s in (*study, *chosen.series, *patient, *images, *implicit)}
    chosen.stored = list(stored.values())
    return chosen


@pytest.fixture
def stored_archive(make_archive, selection):  # type: ignore[no-untyped-def]
    """Start an archive and store the selection into it."""

    def make(extra_config: str = ""):  # type: ignore[no-untyped-def]
        server = make_archive(extra_config)
        sent = storescu(server, *(s.path for s in selection.stored))
        assert sent.returncode == 0, sent.stderr
        return server

    return make


def open_archive(server):  # type: ignore[no-untyped-def]
    """An in-process Archive on the running server's data folder and index."""
    from samarkiv.config import Settings
    from samarkiv.core.archive import Archive

    return Archive(Settings(data=server.data, index_url=server.index_url), run_migrations=False)


# --- DCMTK peers ---------------------------------------------------------------------------


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "peer exited early"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


@dataclass
class StoreSCP:
    """A DCMTK storescp writing what it receives, bit for bit, to ``out``."""

    aet: str
    out: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def start(self, *options: str) -> StoreSCP:
        require_tool("storescp")
        self.out.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "-aet", self.aet, "+B", *options, "-od", str(self.out), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dcmtk_env(),
        )  # fmt: skip
        wait_for_port(self.port, self.process)
        return self

    def take(self) -> dict[str, Path]:
        """Received files by SOP Instance UID; they move out of ``out``."""
        batch = self.out / f"batch-{time.monotonic_ns()}"
        batch.mkdir()
        received = {}
        for path in self.out.iterdir():
            if path.is_file():
                path = path.rename(batch / path.name)
                received[pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID] = path
        return received

    def node_config(self) -> str:
        return f'[[nodes]]\naet = "{self.aet}"\nhost = "127.0.0.1"\nport = {self.port}\n'

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator:
    started: list[StoreSCP] = []

    def start(aet: str, *options: str) -> StoreSCP:
        scp = StoreSCP(aet, tmp_path / f"received-{aet}").start(*options)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@dataclass
class Final:
    """The final C-MOVE/C-GET response as DCMTK's debug output shows it."""

    status: int
    completed: int
    failed: int
    warning: int
    failed_uids: list[str]
    output: str


def final_response(output: str) -> Final:
    tail = output[output.rindex("C-MOVE RSP" if "C-MOVE RSP" in output else "C-GET RSP") :]

    def number(label: str) -> int:
        value = re.search(rf"{label} Suboperations\s*:\s*(\w+)", tail)
        assert value is not None, output
        return 0 if value.group(1) == "none" else int(value.group(1))

    status = re.search(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", tail)
    assert status is not None, output
    failed = re.search(r"\(0008,0058\) UI \[([^\]]*)\]", tail)
    return Final(
        int(status.group(1), 16), number("Completed"), number("Failed"), number("Warning"),
        failed.group(1).split("\\") if failed else [], output,
    )  # fmt: skip


def dcmtk_retrieve(tool: str, server, *args: str) -> Final:  # type: ignore[no-untyped-def]
    require_tool(tool)
    result = subprocess.run(
        [tool, "-d", "-aec", server.aet, *args, "127.0.0.1", str(server.dicom_port)],
        capture_output=True, text=True, env=dcmtk_env(), timeout=120,
    )  # fmt: skip
    return final_response(result.stdout + result.stderr)


def movescu(server, destination: str, *keys: str, model: str = "-S") -> Final:  # type: ignore[no-untyped-def]
    return dcmtk_retrieve("movescu", server, model, "-aem", destination, *(a for k in keys for a in ("-k", k)))


def assert_byte_identical(server, received: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    archive = open_archive(server)
    try:
        for uid, path in received.items():
            stored = archive.catalog.instance(uid)
            assert stored is not None
            assert dataset_bytes(path) == dataset_bytes(stored_object(archive, stored)), uid
    finally:
        archive.close()


def assert_same_content(original: Path, received: Path) -> None:
    """Re-encoded in another uncompressed syntax: same attributes, same pixels."""
    before, after = pydicom.dcmread(original), pydicom.dcmread(received)
    assert after.file_meta.TransferSyntaxUID in UNCOMPRESSED
    public = lambda ds: {e.tag for e in ds if not e.tag.is_private and e.tag.element != 0}  # noqa: E731
    assert public(after) == public(before)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "PatientName", "Rows", "Columns"):
        assert after.get(keyword) == before.get(keyword)
    if "PixelData" in before:
        assert (after.pixel_array == before.pixel_array).all()


def uids(samples: list[Sample]) -> set[str]:
    return {s.sop_instance for s in samples}


def scu_ae() -> AE:
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def identifier(**keys: str) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def final_status(responses) -> Dataset:  # type: ignore[no-untyped-def]
    statuses = [status for status, _identifier in responses]
    assert statuses and all("Status" in s for s in statuses)
    return statuses[-1]


# --- C-MOVE ----------------------------------------------------------------------------------


def test_move(stored_archive, storescp, selection):
    """Every level and both models to a config node, bit for bit; conversion
    and failure counting to a ``nodes add`` node that takes implicit VR only;
    refusals."""
    dest = storescp("DEST", "+xa")  # accepts every transfer syntax
    implicit_only = storescp("DEST2", "+xi")
    server = stored_archive(dest.node_config())
    study, series, images = selection.study, selection.series, selection.images
    study_key = f"StudyInstanceUID={study[0].study}"

    final = movescu(server, "DEST", "QueryRetrieveLevel=STUDY", study_key)
    assert (final.status, final.completed, final.failed) == (0x0000, len(study), 0), final.output
    received = dest.take()
    assert set(received) == uids(study)
    assert_byte_identical(server, received)

    final = movescu(server, "DEST", "QueryRetrieveLevel=SERIES", f"SeriesInstanceUID={series[0].series}")
    assert (final.status, final.completed, final.failed) == (0x0000, len(series), 0), final.output
    received = dest.take()
    assert set(received) == uids(series)
    assert_byte_identical(server, received)

    uid_list = "\\".join(s.sop_instance for s in images)  # big endian, deflated, implicit VR
    final = movescu(server, "DEST", "QueryRetrieveLevel=IMAGE", f"SOPInstanceUID={uid_list}")
    assert (final.status, final.completed, final.failed) == (0x0000, len(images), 0), final.output
    received = dest.take()
    assert set(received) == uids(images)
    assert_byte_identical(server, received)

    patient = selection.of_patient()
    final = movescu(server, "DEST", "QueryRetrieveLevel=PATIENT", f"PatientID={selection.patient_id}", model="-P")
    assert (final.status, final.completed, final.failed) == (0x0000, len(patient), 0), final.output
    received = dest.take()
    assert set(received) == uids(patient)
    assert_byte_identical(server, received)

    # Patient Root below the PATIENT level: the Patient ID narrows the match.
    right = movescu(server, "DEST", "QueryRetrieveLevel=STUDY", f"PatientID={study[0].patient_id}", study_key, model="-P")
    assert (right.status, right.completed) == (0x0000, len(study))
    wrong = movescu(server, "DEST", "QueryRetrieveLevel=STUDY", "PatientID=nobody", study_key, model="-P")
    assert (wrong.status, wrong.completed) == (0x0000, 0)
    assert set(dest.take()) == uids(study)

    # DEST2 is unknown until added with the CLI; it takes implicit VR only.
    assert movescu(server, "DEST2", "QueryRetrieveLevel=STUDY", study_key).status == 0xA801
    server.cli("nodes", "add", "DEST2", "127.0.0.1", str(implicit_only.port))
    compressed = {s.sop_instance for s in study if s.compressed}
    final = movescu(server, "DEST2", "QueryRetrieveLevel=STUDY", study_key)
    assert final.status == 0xB000, final.output
    assert (final.completed, final.failed) == (len(study) - len(compressed), len(compressed))
    assert set(final.failed_uids) == compressed
    others = [s for s in images if s.transfer_syntax != "1.2.840.10008.1.2"]  # big endian, deflated
    final = movescu(server, "DEST2", "QueryRetrieveLevel=IMAGE", "SOPInstanceUID=" + "\\".join(uids(others)))
    assert (final.status, final.completed) == (0x0000, len(others)), final.output
    received = implicit_only.take()
    assert set(received) == uids(study) - compressed | uids(others)
    by_uid = {s.sop_instance: s for s in selection.stored}
    for uid, path in received.items():
        assert transfer_syntax_of(path) == "1.2.840.10008.1.2"
        assert_same_content(by_uid[uid].path, path)

    sent = 2 * len(study) + len(series) + len(images) + len(patient) + len(received)
    metrics = httpx.get(f"{server.http}/metrics", headers=server.headers).text
    assert f'samarkiv_retrieved_instances_total{{outcome="sent"}} {float(sent)}' in metrics
    assert f'samarkiv_retrieved_instances_total{{outcome="failed"}} {float(len(compressed))}' in metrics

    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
    assert assoc.is_established
    try:
        def move(ds: Dataset, destination: str = "DEST") -> Dataset:
            return final_status(assoc.send_c_move(ds, destination, StudyRootQueryRetrieveInformationModelMove))

        assert move(identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study[0].study), "NOWHERE").Status == 0xA801
        assert move(identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.*")).Status == 0xA900
        assert move(identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID=study[0].study)).Status == 0xA900
        nothing = move(identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.3"))
        assert (nothing.Status, nothing.NumberOfCompletedSuboperations, nothing.NumberOfFailedSuboperations) == (0, 0, 0)
    finally:
        assoc.release()
    assert dest.take() == {}


# --- C-GET ------------------------------------------------------------------------------------


def getscu(server, out: Path, *keys: str) -> Final:  # type: ignore[no-untyped-def]
    out.mkdir(exist_ok=True)
    return dcmtk_retrieve("getscu", server, "-S", "+B", "-od", str(out), *(a for k in keys for a in ("-k", k)))


def received_files(out: Path) -> dict[str, Path]:
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()}


# An association that proposes only Storage, Verification and C-GET is served
# by samarkiv's own fast path (dimse/fastpath.py); one that also proposes
# C-MOVE goes to pynetdicom and dimse/retrieve.py. Both are checked.
ROUTES = {"fast path": [], "pynetdicom": [StudyRootQueryRetrieveInformationModelMove]}


def pynetdicom_get(server, query: Dataset, sop_classes: set[str], route: str) -> tuple[Dataset, list[str], list[str]]:  # type: ignore[no-untyped-def]
    """C-GET offering ``sop_classes`` in uncompressed syntaxes only: the final
    status, its Failed SOP Instance UID List and the UIDs received."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for model in ROUTES[route]:
        ae.add_requested_context(model)
    for sop_class in sorted(sop_classes):
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    roles = [build_role(sop_class, scp_role=True) for sop_class in sorted(sop_classes)]
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet, ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    status, final_identifier = responses[-1]
    failed = final_identifier.get("FailedSOPInstanceUIDList", []) if final_identifier is not None else []
    return status, [failed] if isinstance(failed, str) else list(failed), received


def test_get(stored_archive, selection, tmp_path):
    """C-STOREs over the requestor's association, as stored when the negotiated
    syntax allows, re-encoded between uncompressed syntaxes, failed otherwise;
    refusals."""
    server = stored_archive()

    # getscu offers Explicit VR LE, Explicit VR BE and Implicit VR LE in one
    # context per SOP class; the archive accepts Explicit VR LE (what most
    # objects are stored in), so implicit VR objects are re-encoded for it.
    implicit = selection.implicit
    out = tmp_path / "get-implicit"
    final = getscu(server, out, "QueryRetrieveLevel=IMAGE", "SOPInstanceUID=" + "\\".join(uids(implicit)))
    assert (final.status, final.completed, final.failed) == (0x0000, len(implicit), 0), final.output
    received = received_files(out)
    assert set(received) == uids(implicit)
    by_uid = {s.sop_instance: s for s in implicit}
    for uid, path in received.items():
        assert transfer_syntax_of(path) == "1.2.840.10008.1.2.1"
        assert_same_content(by_uid[uid].path, path)

    # getscu offers uncompressed syntaxes only: the compressed objects cannot go.
    study = selection.study
    compressed = {s.sop_instance for s in study if s.compressed}
    out = tmp_path / "get-study"
    final = getscu(server, out, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study[0].study}")
    assert final.status == 0xB000, final.output
    assert (final.completed, final.failed) == (len(study) - len(compressed), len(compressed))
    received = received_files(out)
    assert set(received) == uids(study) - compressed
    by_uid = {s.sop_instance: s for s in study}
    archive = open_archive(server)
    try:
        for uid, path in received.items():
            stored = archive.catalog.instance(uid)
            assert stored is not None
            if transfer_syntax_of(path) == stored.transfer_syntax_uid:
                assert dataset_bytes(path) == dataset_bytes(stored_object(archive, stored))
            else:  # the archive accepted another uncompressed syntax for the context
                assert_same_content(by_uid[uid].path, path)
    finally:
        archive.close()

    # getscu does not read the final response's identifier; pynetdicom shows
    # the Failed SOP Instance UID List (PS3.4 C.4.3.1.3.2).
    sop_classes = {str(pydicom.dcmread(s.path, stop_before_pixels=True).SOPClassUID) for s in study}
    query = identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study[0].study)
    for route in ROUTES:
        status, failed, got = pynetdicom_get(server, query, sop_classes, route)
        assert status.Status == 0xB000, route
        assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (len(got), len(compressed))
        assert set(failed) == compressed, route
        assert set(got) == uids(study) - compressed, route
        check_get_refusals(server, route)


def check_get_refusals(server, route: str) -> None:  # type: ignore[no-untyped-def]
    """Bad identifiers get 0xA900; nothing matching is a success with no sub-operations."""
    ae = scu_ae()
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    for model in ROUTES[route]:
        ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
    assert assoc.is_established
    try:
        def get(ds: Dataset, model: str = StudyRootQueryRetrieveInformationModelGet) -> Dataset:
            return final_status(assoc.send_c_get(ds, model))

        bad = [
            identifier(StudyInstanceUID="1.2.3"),  # no level
            identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.*"),  # wildcard
            identifier(QueryRetrieveLevel="STUDY"),  # no unique key
            identifier(QueryRetrieveLevel="PATIENT", PatientID="X"),  # no PATIENT level in Study Root
            identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3\\1.2.4", SeriesInstanceUID="1.2.5"),
            identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.3", SOPInstanceUID="1.2.4"),
        ]
        for ds in bad:
            assert get(ds).Status == 0xA900, (route, ds)
        assert get(identifier(QueryRetrieveLevel="PATIENT"), PatientRootQueryRetrieveInformationModelGet).Status == 0xA900
        for status in (
            get(identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID="1.2.3\\1.2.4")),
            get(identifier(QueryRetrieveLevel="PATIENT", PatientID="nobody"), PatientRootQueryRetrieveInformationModelGet),
        ):
            assert (status.Status, status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations) == (0, 0, 0)
    finally:
        assoc.release()


# --- C-CANCEL ---------------------------------------------------------------------------------


MANY = 30


@pytest.fixture
def many_instances(tmp_path: Path, samples: list[Sample]) -> tuple[str, str, list[Path]]:
    """MANY copies of a small real image in one new study: (SOP Class, Study UID, files)."""
    explicit = [s for s in samples if s.transfer_syntax == "1.2.840.10008.1.2.1"]
    require_samples(explicit, "explicit VR little endian instance")
    template = pydicom.dcmread(min(explicit, key=lambda s: s.path.stat().st_size).path)
    study, series = generate_uid(), generate_uid()
    folder = tmp_path / "many"
    folder.mkdir()
    files = []
    for number in range(1, MANY + 1):
        template.StudyInstanceUID, template.SeriesInstanceUID = study, series
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = number
        path = folder / f"{number}.dcm"
        template.save_as(path, enforce_file_format=True)
        files.append(path)
    return template.SOPClassUID, study, files


def assert_cancelled(status: Dataset, received: int) -> None:
    assert status.Status == 0xFE00
    remaining = status.NumberOfRemainingSuboperations
    assert status.NumberOfCompletedSuboperations == received
    assert 1 <= received and remaining >= 1
    assert received + remaining + status.NumberOfFailedSuboperations + status.NumberOfWarningSuboperations == MANY


def test_cancel(make_archive, many_instances):
    """A C-CANCEL during a C-GET and during a C-MOVE ends it with 0xFE00 and counts
    that add up (PS3.4 C.4.2.3.1, C.4.3.3.1)."""
    sop_class, study, files = many_instances
    query = identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study)
    first_store, cancel_sent = threading.Event(), threading.Event()
    moved: list[str] = []

    def on_moved(event: evt.Event) -> int:
        moved.append(event.request.AffectedSOPInstanceUID)
        if len(moved) == 1:  # hold the first sub-operation until the C-CANCEL is out
            first_store.set()
            cancel_sent.wait(10)
        return 0x0000

    dest_ae = scu_ae()
    dest_ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    dest = dest_ae.start_server(
        ("127.0.0.1", port), block=False, ae_title="CANCELDEST", evt_handlers=[(evt.EVT_C_STORE, on_moved)]
    )
    try:
        server = make_archive(f'[[nodes]]\naet = "CANCELDEST"\nhost = "127.0.0.1"\nport = {port}\n')
        assert storescu(server, *files).returncode == 0

        got: list[str] = []

        def on_got(event: evt.Event) -> int:
            got.append(event.request.AffectedSOPInstanceUID)
            if len(got) == 1:  # cancel before answering the first sub-operation
                event.assoc.send_c_cancel(1, query_model=StudyRootQueryRetrieveInformationModelGet)
            return 0x0000

        ae = scu_ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(sop_class)
        assoc = ae.associate(
            "127.0.0.1", server.dicom_port, ae_title=server.aet,
            ext_neg=[build_role(sop_class, scp_role=True)], evt_handlers=[(evt.EVT_C_STORE, on_got)],
        )  # fmt: skip
        assert assoc.is_established

        def cancel_move() -> None:
            if first_store.wait(30):
                assoc.send_c_cancel(2, query_model=StudyRootQueryRetrieveInformationModelMove)
                cancel_sent.set()

        canceller = threading.Thread(target=cancel_move, daemon=True)
        canceller.start()
        try:
            status = final_status(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet, msg_id=1))
            assert_cancelled(status, len(got))
            status = final_status(
                assoc.send_c_move(query, "CANCELDEST", StudyRootQueryRetrieveInformationModelMove, msg_id=2)
            )
            assert_cancelled(status, len(moved))
        finally:
            assoc.release()
            canceller.join(5)
    finally:
        dest.shutdown()
