"""C-MOVE and C-GET SCP (PS3.4 C.4.2 and C.4.3): stored objects go out as they are.

pynetdicom runs the retrieve protocol (pending responses, sub-operation
counts, C-CANCEL, final status) around the handlers below, but it sends each
sub-operation by calling ``send_c_store(dataset)`` on the association with a
decoded dataset. Stored objects are sent undecoded instead: the handler
yields a :class:`SubOperation` (a Dataset naming a stored instance) and the
association's ``send_c_store`` is replaced by :class:`StoredSender`, which
streams the blob over a presentation context with the stored transfer syntax
(``_config.STORE_SEND_CHUNKED_DATASET``), re-encodes it with pydicom only
between uncompressed transfer syntaxes (PS3.5 A.1-A.3), and fails the
sub-operation when the peer accepts neither.

Access (issue 5): the requester's right is checked (the association's
principal: its negotiated user, else the calling AE's service identity; for
a C-MOVE never the destination's). Only instances of the studies it may
retrieve go out, one audit record per study (samarkiv/access/gate.py); the
instances of the other studies are failed sub-operations (Failed SOP
Instance UID List, final status 0xB000 when some went), and a request of
which nothing may go fails with 0xC000 and the Error Comment "not authorised"
(PS3.4 C.4.2.1.5, C.4.3.1.4; docs/conformance.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy.exc import SQLAlchemyError

from ..core.archive import Archive
from ..index.catalog import StoredInstance
from ..index.retrieval import (
    IdentifierError,
    InformationModel,
    parse_identifier,
    resolve_node,
)
from .find import principal_of
from .net import NO_DELAY_HANDLERS

log = logging.getLogger(__name__)

MODELS: dict[str, InformationModel] = {
    PatientRootQueryRetrieveInformationModelMove: InformationModel.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelMove: InformationModel.STUDY_ROOT,
    PatientRootQueryRetrieveInformationModelGet: InformationModel.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelGet: InformationModel.STUDY_ROOT,
}

# Identifiers arrive in any uncompressed transfer syntax (PS3.4 C.5.4).
IDENTIFIER_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]
# What a C-MOVE proposes beside the stored syntax, in order of preference.
FALLBACK_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1-255

# PS3.4 Tables C.4-2 and C.4-3
PENDING = 0xFF00
CANCELLED = 0xFE00
OUT_OF_RESOURCES_MATCHES = 0xA701  # unable to calculate number of matches
IDENTIFIER_MISMATCH = 0xA900  # identifier does not match SOP class
UNABLE_TO_PROCESS = 0xC000
NOT_AUTHORISED = 0xC000  # Failed: Unable to process, Error Comment "not authorised"

# Byte width of the "other" VRs whose values are swapped between byte orders.
_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


class SubOperationFailed(ValueError):
    """A C-STORE sub-operation could not be attempted (pynetdicom counts it failed)."""


@dataclass
class Tally:
    """Outcome counts of one C-MOVE/C-GET, for its summary log line."""

    sent: int = 0
    failed: int = 0


class SubOperation(Dataset):
    """Stands for one stored instance in pynetdicom's sub-operation loop.

    It carries the SOP Instance UID (pynetdicom lists failed ones in the
    Failed SOP Instance UID List) and is recognised by StoredSender.
    """

    def __init__(
        self, stored: StoredInstance, tally: Tally, originator_aet: str | None = None, *, refused: bool = False
    ) -> None:
        super().__init__()
        self.SOPClassUID = stored.sop_class_uid
        self.SOPInstanceUID = stored.sop_instance_uid
        self.stored = stored
        self.tally = tally
        self.originator_aet = originator_aet
        self.refused = refused  # the requester may not retrieve it: fails, nothing is sent


class Refused(Exception):
    """The request cannot be served at all; ``status`` is its final DIMSE status."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment

    def status_dataset(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        ds.ErrorComment = self.comment[:64]
        return ds


# --- presentation contexts ---------------------------------------------------------


def _accepted_for(assoc: Association, sop_class: str) -> list[PresentationContext]:
    return [
        cx
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == sop_class and cx.as_scu and cx.transfer_syntax
    ]


def choose_context(assoc: Association, stored: StoredInstance) -> tuple[UID, bool] | None:
    """(transfer syntax, send as stored?) for ``stored`` on ``assoc``, or None.

    The stored syntax is used when accepted. Otherwise an uncompressed object
    may be re-encoded in an accepted uncompressed syntax (explicit little
    endian preferred); a compressed one cannot be sent.
    """
    stored_ts = UID(stored.transfer_syntax_uid)
    accepted = [UID(cx.transfer_syntax[0]) for cx in _accepted_for(assoc, stored.sop_class_uid)]
    if stored_ts in accepted:
        return stored_ts, True
    if stored_ts.is_compressed:
        return None
    candidates = [ts for ts in accepted if not ts.is_compressed]
    for preferred in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        if preferred in candidates:
            return preferred, False
    return (candidates[0], False) if candidates else None


def move_contexts(matches: list[StoredInstance]) -> list[PresentationContext]:
    """Contexts for a C-MOVE destination: one per (SOP class, stored syntax), then an
    uncompressed fallback per SOP class, within the 128-context limit."""
    pairs = list(dict.fromkeys((m.sop_class_uid, m.transfer_syntax_uid) for m in matches))
    # Implicit VR Little Endian is every SCP's default, so needs no fallback.
    fallbacks = [
        sop
        for sop in dict.fromkeys(sop for sop, _ts in pairs)
        if any(ts != ImplicitVRLittleEndian for s, ts in pairs if s == sop)
    ]
    if len(pairs) > MAX_CONTEXTS:
        log.warning(
            "C-MOVE needs %d SOP class/transfer syntax pairs; only %d can be proposed",
            len(pairs),
            MAX_CONTEXTS,
        )
    contexts = [build_context(sop, [ts]) for sop, ts in pairs[:MAX_CONTEXTS]]
    room = MAX_CONTEXTS - len(contexts)
    contexts += [build_context(sop, FALLBACK_SYNTAXES) for sop in fallbacks[:room]]
    return contexts


# --- sending ---------------------------------------------------------------------------


def _swap_byte_order(ds: Dataset) -> None:
    """Swap the words of OW/OL/OF/OD/OV values, which pydicom writes as they are."""
    for elem in ds.iterall():
        width = _SWAP_WIDTH.get(str(elem.VR))
        value = elem.value
        if width and isinstance(value, bytes) and len(value) % width == 0:
            swapped = bytearray(len(value))
            for offset in range(width):
                swapped[offset::width] = value[width - 1 - offset :: width]
            elem.value = bytes(swapped)


def transcode(path: Path | BinaryIO, target: UID) -> Dataset:
    """The uncompressed object in ``path`` (a file or an open one), made ready to
    encode in ``target`` (PS3.5 A.1-A.3)."""
    ds = dcmread(path)
    source_little = ds.original_encoding[1]
    for _elem in ds.iterall():  # decode every element under the encoding it was read with
        pass
    if source_little is not None and source_little != target.is_little_endian:
        _swap_byte_order(ds)
    ds.file_meta.TransferSyntaxUID = target
    ds.set_original_encoding(target.is_implicit_VR, target.is_little_endian, ds.original_character_set)
    return ds


class StoredSender:
    """Replaces ``send_c_store`` on one association: SubOperations go out as stored
    blobs, anything else goes to pynetdicom's own method."""

    def __init__(self, assoc: Association, archive: Archive) -> None:
        self.assoc = assoc
        self.archive = archive
        self.send_c_store = assoc.send_c_store  # pynetdicom's bound method

    def __call__(
        self,
        dataset: Any,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        if not isinstance(dataset, SubOperation):
            return self.send_c_store(dataset, msg_id, priority, originator_aet, originator_id)
        if dataset.originator_aet is not None:
            # PS3.7 9.3.1.1: the AE that invoked the C-MOVE, not this archive
            originator_aet = dataset.originator_aet
        if dataset.refused:
            dataset.tally.failed += 1
            raise SubOperationFailed("not authorised")
        try:
            status = self._send(dataset.stored, msg_id, priority, originator_aet, originator_id)
        except Exception:
            self._record(dataset, ok=False)
            raise
        code = status.get("Status")
        self._record(dataset, ok=code is not None and (code == 0x0000 or 0xB000 <= code <= 0xBFFF))
        return status

    def _record(self, sub: SubOperation, *, ok: bool) -> None:
        metrics = self.archive.metrics
        if ok:
            sub.tally.sent += 1
            metrics.retrieved.labels("sent").inc()
            metrics.retrieved_bytes.inc(sub.stored.size)
        else:
            sub.tally.failed += 1
            metrics.retrieved.labels("failed").inc()
            log.debug("sub-operation for %s failed", sub.stored.sop_instance_uid)

    def _send(
        self,
        stored: StoredInstance,
        msg_id: int,
        priority: int,
        originator_aet: str | None,
        originator_id: int | None,
    ) -> Dataset:
        choice = choose_context(self.assoc, stored)
        if choice is None:
            raise SubOperationFailed(
                f"peer accepts no presentation context for {UID(stored.sop_class_uid).name} "
                f"in {UID(stored.transfer_syntax_uid).name} or a syntax it can be converted to"
            )
        target, as_stored = choice
        with self._local_file(stored) as path:
            dataset: Path | Dataset = path if as_stored else transcode(path, target)
            return self.send_c_store(dataset, msg_id, priority, originator_aet, originator_id)

    @contextmanager
    def _local_file(self, stored: StoredInstance) -> Iterator[Path]:
        """The blob as a local file (copied to staging if the store is not a filesystem)."""
        path = self.archive.instance_path(stored)
        try:
            if path is not None:
                if not path.is_file():
                    raise FileNotFoundError(f"blob {stored.blob_key} is missing")
                yield path
                return
            fd, name = tempfile.mkstemp(suffix=".dcm", dir=self.archive.staging)
            try:
                with os.fdopen(fd, "wb") as out, self.archive.open_instance(stored) as blob:
                    shutil.copyfileobj(blob, out, 1 << 20)
                yield Path(name)
            finally:
                Path(name).unlink(missing_ok=True)
        except OSError as exc:
            self.archive.metrics.errors.labels("retrieve-io").inc()
            log.error("cannot read blob %s: %s", stored.blob_key, exc)
            raise SubOperationFailed(f"cannot read blob {stored.blob_key}") from None


def install_sender(assoc: Association, archive: Archive) -> None:
    """Make ``assoc`` send SubOperations as stored blobs (idempotent)."""
    if not isinstance(assoc.__dict__.get("send_c_store"), StoredSender):
        assoc.send_c_store = StoredSender(assoc, archive)  # type: ignore[method-assign]


# --- handlers --------------------------------------------------------------------------


def resolve_request(event: evt.Event, archive: Archive, denied: list[StoredInstance] | None = None) -> list[StoredInstance]:
    """The instances a C-MOVE/C-GET names that the requester may retrieve (those it
    may not go to ``denied``); raise Refused when it cannot be answered, or when
    it names only instances the requester may not retrieve."""
    model = MODELS[str(event.request.AffectedSOPClassUID)]
    principal = principal_of(archive, event.assoc)
    if principal is None:
        raise Refused(NOT_AUTHORISED, "not authorised")
    try:
        identifier = event.identifier
    except Exception as exc:  # noqa: BLE001  (undecodable identifier)
        raise Refused(UNABLE_TO_PROCESS, f"identifier cannot be decoded ({type(exc).__name__})") from None
    try:
        request = parse_identifier(identifier, model)
    except IdentifierError as exc:
        raise Refused(IDENTIFIER_MISMATCH, str(exc)) from None
    refused: list[StoredInstance] = []
    try:
        allowed = archive.find_instances(request, principal=principal, refused=refused)
    except SQLAlchemyError as exc:
        archive.metrics.errors.labels("retrieve-index").inc()
        log.error("retrieve: index query failed: %s", exc)
        raise Refused(OUT_OF_RESOURCES_MATCHES, "index unavailable") from None
    if refused and not allowed:
        raise Refused(NOT_AUTHORISED, "not authorised")
    if denied is not None:
        denied.extend(refused)
    return allowed


def sub_operations(
    event: evt.Event,
    matches: list[StoredInstance],
    tally: Tally,
    originator_aet: str | None = None,
    denied: list[StoredInstance] = (),  # type: ignore[assignment]
) -> Iterator[tuple[int, Dataset | None]]:
    """Pending yields, one per instance, until done or cancelled (PS3.4 C.4.2.3.1, C.4.3.3.1);
    the ``denied`` ones last, as failed sub-operations."""
    for stored, refused in [*((m, False) for m in matches), *((d, True) for d in denied)]:
        if event.is_cancelled:
            log.info("retrieve cancelled by the peer after %d sent, %d failed", tally.sent, tally.failed)
            yield CANCELLED, None
            return
        yield PENDING, SubOperation(stored, tally, originator_aet, refused=refused)


def _peer(event: evt.Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def handle_get(event: evt.Event, archive: Archive) -> Iterator[Any]:
    """EVT_C_GET handler (PS3.4 C.4.3): C-STOREs go back over the requestor's association,
    on the storage contexts it negotiated with the SCP role for itself."""
    peer = _peer(event)
    denied: list[StoredInstance] = []
    try:
        matches = resolve_request(event, archive, denied)
    except Refused as refused:
        log.warning("C-GET from %s refused (0x%04X): %s", peer, refused.status, refused.comment)
        yield 1  # pynetdicom sends a final status only once sub-operations are announced
        yield refused.status_dataset(), None
        return
    install_sender(event.assoc, archive)
    tally = Tally()
    log.info("C-GET from %s: %d instance(s), %d not authorised", peer, len(matches), len(denied))
    yield len(matches) + len(denied)
    yield from sub_operations(event, matches, tally, denied=denied)
    log.info("C-GET from %s done: %d sent, %d failed", peer, tally.sent, tally.failed)


def handle_move(event: evt.Event, archive: Archive) -> Iterator[Any]:
    """EVT_C_MOVE handler (PS3.4 C.4.2): C-STOREs go on a new association to the
    Move Destination, a node of the config file or of ``samarkiv nodes add``."""
    peer = _peer(event)
    destination = str(event.request.MoveDestination or "").strip()
    try:
        address = resolve_node(archive.settings, archive.catalog, destination)
    except SQLAlchemyError as exc:
        log.error("C-MOVE: node lookup failed: %s", exc)
        address = None
    if address is None:
        log.warning("C-MOVE from %s refused: unknown move destination %r", peer, destination)
        yield None, None  # pynetdicom answers 0xA801
        return
    host, port = address
    handlers: list[tuple[evt.EventType, Callable[..., Any]]] = [
        *NO_DELAY_HANDLERS,
        (evt.EVT_CONN_OPEN, lambda e: install_sender(e.assoc, archive)),
    ]
    denied: list[StoredInstance] = []
    try:
        matches = resolve_request(event, archive, denied)
    except Refused as refused:
        log.warning("C-MOVE from %s refused (0x%04X): %s", peer, refused.status, refused.comment)
        # pynetdicom opens the destination association before it takes a final
        # status; propose Verification only so that nothing else is negotiated.
        yield host, port, {"contexts": [build_context(Verification)], "evt_handlers": handlers}
        yield 1
        yield refused.status_dataset(), None
        return
    yield host, port, {"contexts": move_contexts(matches), "evt_handlers": handlers}
    tally = Tally()
    log.info("C-MOVE from %s to %s: %d instance(s), %d not authorised", peer, destination, len(matches), len(denied))
    yield len(matches) + len(denied)
    yield from sub_operations(event, matches, tally, originator_aet=peer, denied=denied)
    log.info("C-MOVE from %s to %s done: %d sent, %d failed", peer, destination, tally.sent, tally.failed)


def handlers(archive: Archive, ae: AE) -> list[tuple[evt.EventType, Callable]]:
    """Add the Patient and Study Root MOVE and GET contexts; return the retrieve handlers."""
    for sop_class in MODELS:
        ae.add_supported_context(sop_class, IDENTIFIER_SYNTAXES)
    return [
        (evt.EVT_C_GET, partial(handle_get, archive=archive)),
        (evt.EVT_C_MOVE, partial(handle_move, archive=archive)),
    ]
