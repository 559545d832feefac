"""``samarkiv serve``: the DIMSE and HTTP servers in one process, stopped gracefully."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import IO

import uvicorn

from .config import Settings
from .core.archive import Archive
from .core.writeback import JournalMover
from .dimse.server import DicomServer
from .lifecycle.scheduler import LifecycleScheduler
from .web.app import Readiness, create_app

log = logging.getLogger(__name__)


class DataFolderBusy(RuntimeError):
    pass


def lock_data_folder(data: Path) -> IO[str]:
    """One embedded archive per data folder: a second ``serve`` would corrupt nothing
    but would sweep the first one's staging files, so refuse it."""
    data.mkdir(parents=True, exist_ok=True)
    handle = open(data / "samarkiv.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataFolderBusy(f"another samarkiv process is using {data}") from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class _Server(uvicorn.Server):
    """Uvicorn that also closes the DICOM door the moment a signal arrives, and
    does not re-raise the signal afterwards: the DICOM side must still drain."""

    def __init__(self, config: uvicorn.Config, on_exit) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:  # type: ignore[no-untyped-def]
        self._on_exit()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def _hl7_listener(archive: Archive):  # type: ignore[no-untyped-def]
    from .hl7.listener import Hl7Listener

    listener = Hl7Listener(archive)
    listener.start()
    return listener


def _first_admin(archive: Archive) -> None:
    """No users yet: make ``admin`` and show its password once, on the console
    only (sys.stderr, never through logging, so no log file keeps it)."""
    from .access.users import UserError, ensure_first_admin

    try:
        password = ensure_first_admin(archive.catalog.writer, archive.settings)
    except UserError as exc:  # no organisation at all yet
        sys.stderr.write(f"\n  samarkiv: no users and {exc}; then samarkiv users add\n\n")
        return
    if password is not None:
        sys.stderr.write(
            "\n  samarkiv: first start, no users. Created user 'admin' (administrator) with password:\n"
            f"\n      {password}\n\n  It is shown only this once. Change it with: samarkiv users passwd admin\n\n"
        )
        sys.stderr.flush()


def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT."""
    lock = lock_data_folder(Path(settings.data))
    archive = Archive(settings)
    cleared = archive.clear_staging()
    # We hold the data folder's lock, so no other process writes these blobs:
    # nothing young can be another store in flight -- unless the index is
    # shared (PostgreSQL), where other nodes store into the same tiers.
    orphans = archive.sweep_orphans(grace_seconds=None if archive.shared else 0)
    if cleared or orphans:
        log.warning(
            "startup sweep: removed %d unfinished staging file(s) and %d orphan blob(s)",
            cleared,
            len(orphans),
        )
    _first_admin(archive)
    readiness = Readiness()
    dicom = DicomServer(archive)
    mover = JournalMover(archive)
    lifecycle = LifecycleScheduler(archive)

    def closing() -> None:
        readiness.ready = False
        dicom.stop_accepting()

    config = uvicorn.Config(
        create_app(archive, readiness),
        host=settings.host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        lifespan="off",
    )
    http = _Server(config, closing)
    dicom.start()
    hl7 = _hl7_listener(archive) if settings.hl7_port else None
    mover.start()
    lifecycle.start()
    readiness.ready = True
    try:
        http.run()
    finally:
        readiness.ready = False
        dicom.stop()
        if hl7 is not None:
            hl7.stop()
        mover.stop()
        lifecycle.stop()
        archive.close()
        lock.close()
        log.info("samarkiv stopped")
