"""Gentle pulling: instance and byte rate limits, and time windows (nights, weekends).

The limiter is a schedule: each reservation moves the earliest start of the
next one by ``max(instances / rate, bytes / byte_rate)`` seconds. Clocks and
sleep are injected, so the schedule is tested without waiting.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as clock_time

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(r"^(?:(?P<days>[a-z,\-]+)\s*)?(?:(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2}))?$")


def _days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"unknown day in {text!r} (use {','.join(DAYS)})")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


@dataclass(frozen=True)
class Window:
    """When pulling may run: days of the week (the day a window starts) and a time span, which may pass midnight."""

    days: frozenset[int]
    start: clock_time
    end: clock_time

    @classmethod
    def parse(cls, text: str) -> Window:
        """``22:00-06:00``, ``sat,sun``, ``mon-fri 19:00-07:00``."""
        m = _WINDOW.match(text.strip().lower())
        if not m or not (m["days"] or m["start"]):
            raise ValueError(f"bad time window {text!r} (e.g. '22:00-06:00', 'sat,sun', 'mon-fri 19:00-07:00')")
        days = _days(m["days"]) if m["days"] else frozenset(range(7))
        start = clock_time.fromisoformat(f"{int(m['start'][:-3]):02d}:{m['start'][-2:]}") if m["start"] else clock_time(0)
        end = clock_time.fromisoformat(f"{int(m['end'][:-3]):02d}:{m['end'][-2:]}") if m["end"] else clock_time(0)
        return cls(days, start, end)

    def contains(self, now: datetime) -> bool:
        t = now.time()
        if self.start < self.end:  # same day
            return now.weekday() in self.days and self.start <= t < self.end
        if self.start == self.end:  # whole day
            return now.weekday() in self.days
        # passes midnight: evening part on a listed day, morning part on the day after one
        return (now.weekday() in self.days and t >= self.start) or ((now.weekday() - 1) % 7 in self.days and t < self.end)


class Throttle:
    """Instance/s and byte/s limits and time windows, shared by all pulling threads."""

    def __init__(
        self,
        instances_per_second: float | None = None,
        bytes_per_second: float | None = None,
        windows: Sequence[Window] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], datetime] = datetime.now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.instances_per_second = instances_per_second or None
        self.bytes_per_second = bytes_per_second or None
        self.windows = tuple(windows)
        self._clock, self._wallclock, self._sleep = clock, wallclock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self, instances: int, nbytes: int) -> float:
        """Book ``instances``/``nbytes`` of transfer; return how long to wait before starting it."""
        cost = 0.0
        if self.instances_per_second:
            cost = max(cost, instances / self.instances_per_second)
        if self.bytes_per_second:
            cost = max(cost, nbytes / self.bytes_per_second)
        with self._lock:
            now = self._clock()
            start = max(self._next, now)
            self._next = start + cost
        return start - now

    @property
    def paces(self) -> bool:
        """Whether a rate limit is set."""
        return bool(self.instances_per_second or self.bytes_per_second)

    def acquire(self, instances: int, nbytes: int) -> None:
        delay = self.reserve(instances, nbytes)
        if delay > 0:
            self._sleep(delay)

    def seconds_until_open(self, now: datetime | None = None) -> float:
        """0 inside a window (or without windows), else the wait until the next one opens (minute steps)."""
        now = now or self._wallclock()
        if not self.windows or any(w.contains(now) for w in self.windows):
            return 0.0
        probe = now.replace(second=0, microsecond=0)
        for minutes in range(1, 8 * 24 * 60 + 1):
            candidate = probe + timedelta(minutes=minutes)
            if any(w.contains(candidate) for w in self.windows):
                return (candidate - now).total_seconds()
        return 0.0

    def wait_for_window(self) -> None:
        while (wait := self.seconds_until_open()) > 0:
            self._sleep(min(wait, 60.0))
