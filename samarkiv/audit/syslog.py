"""Forward DICOM audit messages to a syslog collector (RFC 5424 over UDP or TLS).

Each committed record becomes a PS3.15 A.5 XML message in an RFC 5424 syslog
message: ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID - BOM XML`` with facility
10 (authpriv), severity 5 (notice; 4 for denied/error), MSGID
``IHE+RFC-3881`` (as IHE ATNA sends). UDP sends one message per datagram
(RFC 5426); TLS (RFC 5425) frames each as ``MSG-LEN SP SYSLOG-MSG`` over one
connection verified against ``ca_file`` (mutual TLS when ``cert_file`` is
given), reconnecting after a failure.

Forwarding runs on its own thread with a bounded queue: it never delays the
trail. The database stays the record of truth; when the collector is away
longer than the queue holds, the oldest messages are dropped and counted
(``dropped``), and a warning is logged.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, select

from .config import AuditSettings, parse_syslog_url
from .dicom import audit_message

log = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10
BOM = b"\xef\xbb\xbf"


def syslog_message(xml: bytes, *, host: str, app: str = "samarkiv", severity: int = 5, when: datetime | None = None) -> bytes:
    """An RFC 5424 message carrying ``xml`` (UTF-8 with BOM, RFC 5424 6.4)."""
    when = when or datetime.now(UTC)
    stamp = when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    header = f"<{FACILITY_AUTHPRIV * 8 + severity}>1 {stamp} {host[:255] or '-'} {app[:48]} {os.getpid()} IHE+RFC-3881 - "
    return header.encode("ascii", "replace") + BOM + xml


def octet_frame(message: bytes) -> bytes:
    """RFC 5425 4.3 octet-counting framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode() + b" " + message


class SyslogForwarder:
    """Sends committed records to ``settings.syslog`` (use as the trail's ``forward``)."""

    def __init__(self, settings: AuditSettings, *, engine: Engine | None = None, aet: str = "SAMARKIV", queue_size: int = 10_000) -> None:
        self.scheme, self.host, self.port = parse_syslog_url(settings.syslog)
        self.settings = settings
        self.hostname = socket.gethostname()
        self.source_id = settings.source_id or f"samarkiv@{self.hostname}"
        self.aet = aet
        self.engine = engine
        self.sent = 0
        self.dropped = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
        self._sock: socket.socket | ssl.SSLSocket | None = None
        self._idle = threading.Condition()
        self._busy = 0
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    # --- the trail's side ---------------------------------------------------------------

    def __call__(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._put(record)

    def _put(self, record: Mapping[str, Any]) -> None:
        xml = audit_message(record, source_id=self.source_id, aet=self.aet, patient_id_of=self._patient_id)
        severity = 5 if record["outcome"] == "allowed" and record["action"] != "break-glass" else 4
        message = syslog_message(xml, host=self.hostname, severity=severity, when=record["time"])
        with self._idle:
            self._busy += 1
        while True:
            try:
                self._queue.put_nowait(message)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                    self._done()
                    if self.dropped % 1000 == 1:
                        log.warning("audit syslog collector %s behind: %d messages dropped", self.settings.syslog, self.dropped)
                except queue.Empty:
                    pass

    def _patient_id(self, person_pk: int) -> str:
        return _patient_id(self.engine, person_pk) if self.engine is not None else ""

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued message was sent (or given up on)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)
        self._disconnect()

    # --- the sending thread -------------------------------------------------------------

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            if self._busy <= 0:
                self._idle.notify_all()

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            if message is None:
                return
            delay = 0.2
            for _attempt in range(5):
                try:
                    self._send(message)
                    self.sent += 1
                    break
                except OSError as exc:
                    log.warning("audit syslog to %s failed: %s", self.settings.syslog, exc)
                    self._disconnect()
                    time.sleep(delay)
                    delay *= 2
            else:
                self.dropped += 1
            self._done()

    def _connect(self) -> socket.socket | ssl.SSLSocket:
        if self.scheme == "udp":
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect((self.host, self.port))
            return sock
        context = ssl.create_default_context(cafile=str(self.settings.ca_file) if self.settings.ca_file else None)
        if self.settings.cert_file:
            context.load_cert_chain(str(self.settings.cert_file), str(self.settings.key_file) if self.settings.key_file else None)
        raw = socket.create_connection((self.host, self.port), timeout=10)
        return context.wrap_socket(raw, server_hostname=self.host)

    def _send(self, message: bytes) -> None:
        if self._sock is None:
            self._sock = self._connect()
        if self.scheme == "udp":
            self._sock.send(message)
        else:
            self._sock.sendall(octet_frame(message))

    def _disconnect(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


@lru_cache(maxsize=4096)
def _patient_id_cached(engine: Engine, person_pk: int) -> str:
    from ..index.identity_schema import patient_identifiers as pi

    with engine.connect() as conn:
        row = conn.execute(
            select(pi.c.value, pi.c.issuer)
            .where(pi.c.person_pk == person_pk)
            .order_by(pi.c.national_valid.is_(True).desc(), pi.c.pk)
            .limit(1)
        ).first()
    return f"{row.value}^^^&{row.issuer}&ISO" if row is not None else ""


def _patient_id(engine: Engine, person_pk: int) -> str:
    """The person's Patient ID as an HL7 CX (``ID^^^&ISSUER&ISO``), a national number first."""
    try:
        return _patient_id_cached(engine, person_pk)
    except Exception:  # noqa: BLE001  (a message without the ID beats no message)
        return ""
