"""Storage Commitment Push Model SCP (PS3.4 Annex J) with a pynetdicom SCU, which is
a real peer where DCMTK has no tool."""

from __future__ import annotations

import queue
import threading
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from conftest import free_port, storescu

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


@pytest.fixture(scope="module")
def small_files(sendable_files: list[Path]) -> list[Path]:
    """Three small uncompressed samples of distinct SOP Instance UIDs."""
    from conftest import transfer_syntax_of

    files = sorted(
        (f for f in sendable_files if transfer_syntax_of(f) in UNCOMPRESSED and f.stat().st_size < 200_000),
        key=lambda f: f.stat().st_size,
    )
    if len(files) < 3:
        pytest.skip("fewer than three small uncompressed samples")
    return files[:3]


def references(files: list[Path]) -> list[tuple[str, str]]:
    """(SOP Class UID, SOP Instance UID) of each file."""
    out = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


def action_information(refs: list[tuple[str, str]], transaction_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid or generate_uid()
    ds.ReferencedSOPSequence = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        ds.ReferencedSOPSequence.append(item)
    return ds


def tamper(server, sop_instance_uid: str) -> None:  # type: ignore[no-untyped-def]
    """Flip one byte in the middle of the stored blob (its size stays)."""
    from samarkiv.config import Settings
    from samarkiv.core.archive import Archive

    archive = Archive(Settings(data=server.data, index_url=server.index_url), run_migrations=False)
    try:
        archive.flush_all()  # out of the write-back journal, into a blob file
        stored = archive.catalog.instance(sop_instance_uid)
        assert stored is not None
        path = archive.instance_path(stored)
    finally:
        archive.close()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def scu_ae() -> AE:
    ae = AE(ae_title="COMMITSCU")
    ae.network_timeout = ae.dimse_timeout = 30
    ae.acse_timeout = 5  # a release colliding with a report ends quickly
    return ae


def report_items(info: Dataset, keyword: str) -> dict[tuple[str, str], int | None]:
    """Items of a report sequence: (class, instance) -> Failure Reason (None if absent)."""
    return {
        (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID)): item.get("FailureReason")
        for item in info.get(keyword, [])
    }


def test_report_on_the_requesting_association(archive, small_files):
    assert storescu(archive, *small_files).returncode == 0
    (a_class, a), (b_class, b), (c_class, c) = references(small_files)
    tamper(archive, c)
    other_class = "1.2.840.10008.5.1.4.1.1.1" if a_class != "1.2.840.10008.5.1.4.1.1.1" else "1.2.840.10008.5.1.4.1.1.2"

    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
    answered = threading.Semaphore(0)

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.put((event.event_type, event.event_information))
        return 0x0000, None

    def on_sent(event: evt.Event) -> None:
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            answered.release()

    ae = scu_ae()
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        "127.0.0.1", archive.dicom_port, ae_title=archive.aet,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report), (evt.EVT_DIMSE_SENT, on_sent)],
    )  # fmt: skip
    assert assoc.is_established
    try:
        def commit(refs: list[tuple[str, str]]) -> tuple[str, int, Dataset]:
            request = action_information(refs)
            status, _reply = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
            assert status.Status == 0x0000
            event_type, info = reports.get(timeout=30)
            assert answered.acquire(timeout=30)
            assert info.TransactionUID == request.TransactionUID
            assert info.RetrieveAETitle == archive.aet
            return request.TransactionUID, event_type, info

        unknown = generate_uid()
        _uid, event_type, info = commit([(a_class, a), (b_class, b), (c_class, c), (c_class, unknown), (other_class, a)])
        assert event_type == 2
        assert report_items(info, "ReferencedSOPSequence") == {(a_class, a): None, (b_class, b): None}
        assert report_items(info, "FailedSOPSequence") == {
            (c_class, c): 0x0110,  # processing failure: the blob no longer matches its checksum
            (c_class, unknown): 0x0112,  # no such object instance
            (other_class, a): 0x0119,  # class/instance conflict
        }

        _uid, event_type, info = commit([(a_class, a), (b_class, b)])
        assert event_type == 1
        assert set(report_items(info, "ReferencedSOPSequence")) == {(a_class, a), (b_class, b)}
        assert "FailedSOPSequence" not in info
    finally:
        assoc.release()
    metrics = httpx.get(f"{archive.http}/metrics", headers=archive.headers).text
    assert 'samarkiv_errors_total{kind="blob-corrupt"} 1.0' in metrics


def test_report_on_a_new_association_with_role_selection(make_archive, small_files):
    reports: queue.Queue[tuple[int, Dataset, str, object]] = queue.Queue()

    def on_report(event: evt.Event) -> tuple[int, None]:
        role = event.assoc.requestor.role_selection.get(StorageCommitmentPushModel)
        reports.put((event.event_type, event.event_information, event.assoc.requestor.ae_title, role))
        return 0x0000, None

    listener = scu_ae()
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    port = free_port()
    server_scp = listener.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        archive = make_archive(f'[[nodes]]\naet = "COMMITSCU"\nhost = "127.0.0.1"\nport = {port}\n')
        assert storescu(archive, *small_files).returncode == 0
        refs = references(small_files)

        ae = scu_ae()
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title=archive.aet)
        assert assoc.is_established
        # Send the N-ACTION and release at once, without waiting for its
        # response: the association is gone when the report is ready.
        context = assoc.accepted_contexts[0]
        syntax = context.transfer_syntax[0]
        request = action_information(refs)
        action = N_ACTION()
        action.MessageID = 1
        action.RequestedSOPClassUID = StorageCommitmentPushModel
        action.RequestedSOPInstanceUID = WELL_KNOWN_INSTANCE
        action.ActionTypeID = 1
        action.ActionInformation = BytesIO(encode(request, syntax.is_implicit_VR, syntax.is_little_endian))
        assoc.dimse.send_msg(action, context.context_id)
        assoc.release()

        event_type, info, calling_aet, role = reports.get(timeout=30)
        assert event_type == 1
        assert info.TransactionUID == request.TransactionUID
        assert set(report_items(info, "ReferencedSOPSequence")) == set(refs)
        assert calling_aet == archive.aet
        # PS3.4 J.3.3: the archive asks for the SCP role on its association.
        assert role is not None and role.scp_role is True and not role.scu_role
    finally:
        server_scp.shutdown()


def test_bad_requests_get_n_action_failures(archive):
    ae = scu_ae()
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", archive.dicom_port, ae_title=archive.aet)
    assert assoc.is_established
    try:
        def status_of(ds: Dataset, action_type: int = 1, instance: str = WELL_KNOWN_INSTANCE) -> int:
            status, _reply = assoc.send_n_action(ds, action_type, StorageCommitmentPushModel, instance)
            return status.Status

        ref = [("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")]
        no_transaction = action_information(ref)
        del no_transaction.TransactionUID
        empty = action_information([])
        no_instance = action_information(ref)
        del no_instance.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        bad_uid = action_information(ref, transaction_uid="not-a-uid")

        assert status_of(no_transaction) == 0x0120  # missing attribute
        assert status_of(action_information(ref), action_type=2) == 0x0123  # no such action
        assert status_of(empty) == 0x0121  # missing attribute value
        assert status_of(no_instance) == 0x0120
        assert status_of(bad_uid) == 0x0115  # invalid argument value
        assert status_of(action_information(ref), instance="1.2.3") == 0x0112  # not the well-known instance
        assert assoc.is_established
    finally:
        assoc.release()
