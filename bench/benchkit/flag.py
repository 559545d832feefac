"""The machine-wide benchmark flag, /tmp/BENCH_RUNNING: one benchmark at a time, so none skews another."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FLAG = Path("/tmp/BENCH_RUNNING")


@contextmanager
def bench_flag(poll_seconds: float = 10.0) -> Iterator[None]:
    """Wait while another benchmark holds the flag, then hold it for the ``with`` block."""
    while FLAG.exists():
        print("another benchmark is running (/tmp/BENCH_RUNNING): waiting", file=sys.stderr, flush=True)
        time.sleep(poll_seconds)
    FLAG.touch()
    try:
        yield
    finally:
        FLAG.unlink(missing_ok=True)
