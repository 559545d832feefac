"""Prometheus metrics of lifecycle and fixity, on the archive's registry (GET /metrics)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from ..core.archive import Archive


@dataclass
class LifecycleMetrics:
    jobs: Counter
    bytes_moved: Counter
    bytes_saved: Counter
    fixity_checked: Counter
    fixity_checked_bytes: Counter
    fixity_problems: Counter
    fixity_last_pass: Gauge


_BY_REGISTRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def lifecycle_metrics(archive: Archive) -> LifecycleMetrics:
    """The metrics, registered once per archive registry."""
    registry = archive.metrics.registry
    found = _BY_REGISTRY.get(registry)
    if found is None:
        r = registry
        found = LifecycleMetrics(
            jobs=Counter("samarkiv_lifecycle_jobs", "Lifecycle jobs by outcome", ["outcome"], registry=r),
            bytes_moved=Counter("samarkiv_lifecycle_bytes_written", "Bytes written to target tiers", registry=r),
            bytes_saved=Counter("samarkiv_lifecycle_bytes_saved", "Bytes saved by lossless compression", registry=r),
            fixity_checked=Counter("samarkiv_fixity_checked_objects", "Objects re-read by fixity", registry=r),
            fixity_checked_bytes=Counter("samarkiv_fixity_checked_bytes", "Bytes re-read by fixity", registry=r),
            fixity_problems=Counter(
                "samarkiv_fixity_events", "Fixity findings by outcome (corrupt, missing, repaired, unrepairable)",
                ["outcome"], registry=r,
            ),  # fmt: skip
            fixity_last_pass=Gauge(
                "samarkiv_fixity_last_pass_timestamp_seconds", "When the last full fixity pass ended", registry=r
            ),
        )
        _BY_REGISTRY[registry] = found
    return found
