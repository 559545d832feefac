"""Prometheus metrics of one archive process (served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stores = Counter(
            "samarkiv_stores", "Store requests by outcome", ["outcome"], registry=r
        )
        self.stored_bytes = Counter("samarkiv_stored_bytes", "Bytes of new objects stored", registry=r)
        self.store_seconds = Histogram(
            "samarkiv_store_seconds", "Store latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queries = Counter("samarkiv_queries", "Queries by level", ["level"], registry=r)
        self.query_seconds = Histogram(
            "samarkiv_query_seconds", "Query latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.retrieved = Counter(
            "samarkiv_retrieved_instances", "Instances sent by C-GET/C-MOVE", ["outcome"], registry=r
        )
        self.retrieved_bytes = Counter("samarkiv_retrieved_bytes", "Bytes sent", registry=r)
        self.errors = Counter("samarkiv_errors", "Errors by kind", ["kind"], registry=r)
        self.associations = Counter(
            "samarkiv_associations", "DICOM associations by outcome", ["outcome"], registry=r
        )
        self.written_back = Counter(
            "samarkiv_written_back_instances", "Objects moved from the write-back journal to the blob store", registry=r
        )
        self.journal_instances = Gauge(
            "samarkiv_journal_instances", "Objects waiting in the write-back journal", registry=r
        )
        self.journal_bytes = Gauge("samarkiv_journal_bytes", "Bytes waiting in the write-back journal", registry=r)
