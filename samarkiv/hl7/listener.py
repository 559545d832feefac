"""The HL7 v2 door's lifecycle: ``samarkiv serve`` starts it when
``hl7_port`` is set and stops it with the other doors."""

from __future__ import annotations

import logging

from ..core.archive import Archive
from .ack import build_ack
from .adt import AdtProcessor
from .er7 import Er7Error, read_header
from .message import AckCode, ErrorCode, Issue
from .mllp import MllpServer

log = logging.getLogger(__name__)


class Hl7Listener:
    """An MLLP server on ``settings.host``:``settings.hl7_port`` whose messages
    go to :class:`AdtProcessor`."""

    def __init__(self, archive: Archive, port: int | None = None) -> None:
        settings = archive.settings
        self.processor = AdtProcessor(archive.catalog.writer, settings)
        self.server = MllpServer(
            settings.host,
            settings.hl7_port if port is None else port,
            self.processor.handle,
            self._framing_nak,
            max_connections=settings.max_associations,
        )

    @property
    def port(self) -> int:
        return self.server.port

    def _framing_nak(self, reason: str, data: bytes) -> bytes:
        """AR for bytes that were not a proper MLLP block: never processed;
        the MSH, if one is readable, gives the delimiters and control ID."""
        try:
            header = read_header(data.decode("latin-1"))
        except Er7Error:
            header = None
        issue = Issue(ErrorCode.SEGMENT_SEQUENCE, f"MLLP framing error: {reason}; message not processed")
        ack = build_ack(header, AckCode.REJECT, [issue], application=self.processor.settings.aet)
        return ack.encode("latin-1", errors="replace")

    def start(self) -> None:
        self.server.start()
        log.info("HL7 v2 (MLLP) listening on %s:%d", self.processor.settings.host, self.port)

    def stop(self) -> None:
        self.server.stop()
        log.info("HL7 v2 (MLLP) listener stopped")
