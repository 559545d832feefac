"""The DIMSE front door: one pynetdicom AE serving every DICOM service.

Handlers translate DIMSE messages into core calls and core results into DIMSE
statuses; they hold no business rules (docs/architecture.md).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from functools import partial

from pynetdicom import AE, _config, evt

from ..access.dimse import DimseIdentity
from ..core.archive import Archive
from . import commitment, find, retrieve
from .contexts import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from .acceptor import DicomListener, detached_pynetdicom_server
from .net import NO_DELAY_HANDLERS
from .store import InFlight, handle_store

log = logging.getLogger(__name__)

# Datasets are streamed to a staging file, never held in memory (a 2 GB
# multi-frame costs what a small CT does); the core moves that file into place.
_config.STORE_RECV_CHUNKED_DATASET = True
# C-GET/C-MOVE send stored files as they are, without decoding them.
_config.STORE_SEND_CHUNKED_DATASET = True
# No patient data in logs above DEBUG: pynetdicom would log every identifier
# (Patient ID, names) and a few lines per sub-operation at INFO.
_config.LOG_HANDLER_LEVEL = "none"
_config.LOG_REQUEST_IDENTIFIERS = False
logging.getLogger("pynetdicom").setLevel(logging.WARNING)


# Each service module adds its presentation contexts and returns its handlers.
SERVICES = (find, retrieve, commitment)


def build_ae(archive: Archive) -> AE:
    """An AE with every storage SOP class, verification, and registered services."""
    settings = archive.settings
    ae = AE(ae_title=settings.aet)
    ae.maximum_pdu_size = 0  # no limit on what we receive
    ae.maximum_associations = settings.max_associations
    ae.require_called_aet = True  # a wrong Called AE Title is rejected (PS3.8 7.1.1.7)
    ae.network_timeout = 60
    ae.dimse_timeout = 120
    ae.acse_timeout = 30
    ae.add_supported_context(VERIFICATION, TRANSFER_SYNTAXES)
    for sop_class in STORAGE_SOP_CLASSES:
        # scu_role/scp_role: accept the role reversal a C-GET requestor proposes.
        ae.add_supported_context(sop_class, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


class DicomServer:
    """Our listener plus a pynetdicom AE, in background threads; stops gracefully."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.inflight = InFlight()
        self.ae = build_ae(archive)
        self.identity = DimseIdentity(archive)  # user identity negotiation (samarkiv/access/dimse.py)
        self._listener: DicomListener | None = None

    def handlers(self) -> list[tuple[evt.EventType, Callable]]:
        archive = self.archive
        handlers: list[tuple[evt.EventType, Callable]] = [
            *NO_DELAY_HANDLERS,
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_C_STORE, partial(handle_store, archive=archive, inflight=self.inflight)),
            (evt.EVT_ACCEPTED, lambda event: archive.metrics.associations.labels("accepted").inc()),
            (evt.EVT_REJECTED, lambda event: archive.metrics.associations.labels("rejected").inc()),
            (evt.EVT_ABORTED, lambda event: archive.metrics.associations.labels("aborted").inc()),
        ]
        for service in SERVICES:
            handlers.extend(service.handlers(archive, self.ae))
        handlers.extend(self.identity.handlers())
        return handlers

    def start(self) -> None:
        tempfile.tempdir = str(self.archive.staging)  # chunked receive lands beside the blobs
        settings = self.archive.settings
        fallback = detached_pynetdicom_server(self.ae, self.handlers())
        self._listener = DicomListener(self.archive, self.inflight, fallback, self.identity)
        self._listener.start()
        log.info("DICOM server %s listening on %s:%d", settings.aet, settings.host, settings.dicom_port)

    def stop_accepting(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop_accepting()

    def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop accepting, let stores in flight finish, then end the associations."""
        self.stop_accepting()
        if not self.inflight.wait_idle(grace_seconds):
            log.warning("stores still in flight after %.0fs; aborting", grace_seconds)
        for assoc in list(self.ae.active_associations):
            assoc.abort()
        from ..migrate.deferred import close_intake  # imported late: migrate imports dimse.pdu

        close_intake(self.archive)  # migration associations handed to worker processes
