"""A Minimal Lower Layer Protocol server (HL7 Version 3 Standard: Transport
Specification - MLLP, Release 2; the same block format HL7 v2.5 Appendix C
describes): each message travels as <VT> message <FS><CR>, and each answer
(the ACK) the same way on the same connection.

One thread per connection, blocking reads; at most ``max_connections`` at a
time (more are closed at once). A block larger than ``max_bytes`` is refused
and the connection closed; a connection idle for ``idle_timeout`` seconds, or
silent for ``block_timeout`` seconds in the middle of a block, is closed.
Bytes outside a block that are only white space are ignored; other bytes
ended by <FS><CR> (a message without its start byte), a block whose <FS> is
not followed by <CR>, and a block cut short by a new <VT> are framing errors,
answered by ``on_framing_error`` (a negative ACK) and never processed.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

START_BLOCK = 0x0B  # <VT>
END_BLOCK = 0x1C  # <FS>
CARRIAGE_RETURN = 0x0D  # <CR>
MAX_MESSAGE_BYTES = 1 << 20
IDLE_TIMEOUT = 300.0
BLOCK_TIMEOUT = 30.0


def frame(payload: bytes) -> bytes:
    """``payload`` as an MLLP block."""
    return bytes([START_BLOCK]) + payload + bytes([END_BLOCK, CARRIAGE_RETURN])


class FramingError(Exception):
    """Bytes that are no MLLP block; ``data`` is what was received of it."""

    def __init__(self, reason: str, data: bytes) -> None:
        super().__init__(reason)
        self.data = data


class TooLarge(Exception):
    pass


class _Reader:
    """Reads MLLP blocks from a socket, one at a time."""

    def __init__(self, sock: socket.socket, max_bytes: int, idle_timeout: float, block_timeout: float) -> None:
        self.sock = sock
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.block_timeout = block_timeout
        self.buffer = bytearray()
        self.closed = False

    def _fill(self, timeout: float) -> bool:
        """Read more bytes; False at end of stream."""
        if self.closed:
            return False
        self.sock.settimeout(timeout)
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True

    def next_block(self) -> bytes | None:
        """The next message, None at end of stream; FramingError, TooLarge,
        TimeoutError as their names say."""
        # Outside a block: find <VT>.
        while True:
            start = self.buffer.find(START_BLOCK)
            end = self.buffer.find(bytes([END_BLOCK, CARRIAGE_RETURN]))
            if end >= 0 and (start < 0 or end < start):
                junk = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                if junk.strip():
                    raise FramingError("a message without its start block character <VT>", junk)
                continue
            if start >= 0:
                if bytes(self.buffer[:start]).strip():
                    log.warning("MLLP: %d byte(s) outside a block ignored", start)
                del self.buffer[: start + 1]
                break
            if len(self.buffer) > self.max_bytes:
                raise TooLarge()
            if not self._fill(self.idle_timeout if not self.buffer.strip() else self.block_timeout):
                return None
        # Inside a block: find <FS>.
        scanned = 0
        while True:
            fs = self.buffer.find(END_BLOCK, scanned)
            vt = self.buffer.find(START_BLOCK, scanned)
            if vt >= 0 and (fs < 0 or vt < fs):
                data = bytes(self.buffer[:vt])
                del self.buffer[:vt]  # the new block starts here
                raise FramingError("a block without its end characters <FS><CR>", data)
            if fs > self.max_bytes or (fs < 0 and len(self.buffer) > self.max_bytes):
                raise TooLarge()
            if fs >= 0:
                if fs + 1 >= len(self.buffer):
                    if not self._fill(self.block_timeout):
                        return None
                    continue
                data = bytes(self.buffer[:fs])
                if self.buffer[fs + 1] != CARRIAGE_RETURN:
                    del self.buffer[: fs + 1]
                    raise FramingError("<FS> not followed by <CR>", data)
                del self.buffer[: fs + 2]
                return data
            scanned = len(self.buffer)
            if not self._fill(self.block_timeout):
                return None


def _close_gently(conn: socket.socket, timeout: float, limit: int = 64 << 20) -> None:
    """Half-close and read what the peer still sends, so our last answer is
    not lost to a TCP reset (closing with unread input resets the connection)."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(timeout)
        drained = 0
        while drained < limit and (chunk := conn.recv(65536)):
            drained += len(chunk)
    except OSError:
        pass


class MllpServer:
    """Serves MLLP connections: ``handler(message) -> answer`` for each block,
    ``on_framing_error(reason, data) -> answer`` for bad framing (both give
    the unframed answer bytes)."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Callable[[bytes], bytes],
        on_framing_error: Callable[[str, bytes], bytes],
        *,
        max_bytes: int = MAX_MESSAGE_BYTES,
        max_connections: int = 32,
        idle_timeout: float = IDLE_TIMEOUT,
        block_timeout: float = BLOCK_TIMEOUT,
    ) -> None:
        self.handler = handler
        self.on_framing_error = on_framing_error
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.block_timeout = block_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sock = socket.create_server((host, port), reuse_port=False, backlog=64)
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._acceptor = threading.Thread(target=self._accept, name="hl7-mllp-accept", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:
                break  # closed by stop()
            if not self._slots.acquire(blocking=False):
                log.warning("MLLP: too many connections; closing one from %s", peer[0])
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(conn, peer), name="hl7-mllp", daemon=True)
            with self._lock:
                self._connections.add(conn)
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket, peer: tuple) -> None:  # type: ignore[type-arg]
        reader = _Reader(conn, self.max_bytes, self.idle_timeout, self.block_timeout)
        try:
            while not self._stopping.is_set():
                try:
                    block = reader.next_block()
                except FramingError as exc:
                    log.warning("MLLP framing error from %s: %s", peer[0], exc)
                    conn.sendall(frame(self.on_framing_error(str(exc), exc.data)))
                    continue
                except TooLarge:
                    log.warning("MLLP: message from %s over %d bytes; closing", peer[0], self.max_bytes)
                    conn.sendall(frame(self.on_framing_error(f"message longer than {self.max_bytes} bytes", b"")))
                    _close_gently(conn, self.block_timeout)
                    break
                if block is None:
                    break
                conn.sendall(frame(self.handler(block)))
        except TimeoutError:
            log.info("MLLP: connection from %s timed out", peer[0])
        except OSError as exc:
            if not self._stopping.is_set():
                log.info("MLLP: connection from %s ended: %s", peer[0], exc)
        except Exception:  # noqa: BLE001 — one bad message must not kill the listener
            log.exception("MLLP: connection from %s failed", peer[0])
        finally:
            conn.close()
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())
            self._slots.release()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let messages in progress finish (up to ``timeout``),
        then close the connections."""
        self._stopping.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if self._acceptor is not None:
            self._acceptor.join(timeout)
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RD)  # a blocked recv returns; an answer being sent still goes out
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout)
