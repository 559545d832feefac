"""The clients: DCMTK storescu and getscu, and a pynetdicom C-FIND SCU."""

from __future__ import annotations

import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .servers import dcmtk_env


class BenchError(RuntimeError):
    """A measurement could not be made (server refused, wrong answer, ...)."""


def dcmtk_version() -> str:
    out = subprocess.run(["storescu", "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.splitlines()[0].strip() if out else "unknown"


# --- C-STORE -----------------------------------------------------------------------


def storescu_cmd(aet: str, port: int, files: Sequence[Path]) -> list[str]:
    # -xe: propose Explicit VR Little Endian (what the files are in) first.
    # -R: propose only the SOP classes the files need.
    return ["storescu", "-R", "-xe", "-aet", "BENCHSCU", "-aec", aet, "-to", "30", "-ta", "30", "-td", "120",
            "127.0.0.1", str(port), *map(str, files)]  # fmt: skip


def _check_storescu(proc: subprocess.Popen, stderr: str, what: str) -> None:
    if proc.returncode != 0 or "E:" in stderr or "W: Store SCU: Failed" in stderr:
        raise BenchError(f"storescu ({what}) failed with {proc.returncode}: {stderr[-2000:]}")


def send(aet: str, port: int, chunks: Sequence[Sequence[Path]], timeout: float = 900) -> float:
    """Send each chunk over its own association, all at once; seconds until the last ends."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(storescu_cmd(aet, port, chunk), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, env=dcmtk_env())  # fmt: skip
        for chunk in chunks
    ]
    errors: list[str] = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - started)))
            try:
                _check_storescu(proc, err, f"{len(chunks)} association(s)")
            except BenchError as exc:
                errors.append(str(exc))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    elapsed = time.perf_counter() - started
    if errors:
        raise BenchError(errors[0])
    return elapsed


def split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """Contiguous, nearly equal slices (so parallel associations share some studies)."""
    size, extra = divmod(len(files), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        out.append(list(files[start:end]))
        start = end
    return out


# --- C-FIND ------------------------------------------------------------------------

STUDY_KEYS = (
    "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "StudyDescription", "ReferringPhysicianName",
)  # fmt: skip
COMPUTED_KEYS = ("ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")


def _no_delay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    return {
        "queries": len(latencies_ms),
        "p50_ms": round(percentile(latencies_ms, 0.50), 3),
        "p95_ms": round(percentile(latencies_ms, 0.95), 3),
        "mean_ms": round(statistics.fmean(latencies_ms), 3),
        "min_ms": round(min(latencies_ms), 3),
        "max_ms": round(max(latencies_ms), 3),
    }


@dataclass
class FindRun:
    latencies_ms: list[float] = field(default_factory=list)
    matches: int = 0
    wrong_counts: int = 0
    keys: list[str] = field(default_factory=list)
    wrong_examples: list[str] = field(default_factory=list)
    failed_queries: int = 0
    capped: bool = False

    def merge(self, other: "FindRun") -> None:
        self.latencies_ms += other.latencies_ms
        self.matches += other.matches
        self.wrong_counts += other.wrong_counts
        self.failed_queries += other.failed_queries
        self.wrong_examples = (self.wrong_examples + other.wrong_examples)[:5]
        self.capped = self.capped or other.capped
        self.keys = other.keys

    def as_dict(self) -> dict[str, Any]:
        return {**latency_stats(self.latencies_ms), "matches": self.matches, "wrong_counts": self.wrong_counts,
                "failed_queries": self.failed_queries, "wrong_examples": self.wrong_examples, "time_capped": self.capped, "keys": self.keys}  # fmt: skip


class FindClient:
    """A pynetdicom C-FIND SCU holding one association to one server.

    Study-level C-FIND by Patient ID; ``patients`` maps a Patient ID to how
    many studies it has, and every answer's count is checked against it.
    """

    def __init__(
        self, aet: str, port: int, patients: dict[str, int], *, computed: bool = False, issuer: str | None = None
    ) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

        self.model = StudyRootQueryRetrieveInformationModelFind
        self.aet, self.port, self.patients, self.issuer = aet, port, patients, issuer
        self.ids = sorted(patients)
        self.keys = list(STUDY_KEYS) + (list(COMPUTED_KEYS) if computed else [])
        self.ae = AE(ae_title="BENCHSCU")
        self.ae.acse_timeout = 30
        self.ae.dimse_timeout = 30
        self.ae.network_timeout = 120
        self.ae.add_requested_context(self.model, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.assoc: Any = None
        self.associations = 0

    def open(self) -> "FindClient":
        from pynetdicom import evt

        assoc = self.ae.associate("127.0.0.1", self.port, ae_title=self.aet, evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)])
        if not assoc.is_established:
            raise BenchError("C-FIND association rejected (the server supports no Study Root C-FIND?)")
        if not any(cx.abstract_syntax == self.model for cx in assoc.accepted_contexts):
            assoc.release()
            raise BenchError("the server rejected the Study Root C-FIND presentation context")
        # pynetdicom's association reactor thread also takes DIMSE messages off
        # the queue when it is not paused, and its pause (a flag set before
        # the reactor really stops) is racy: now and then it takes a C-FIND
        # response meant for send_c_find() and drops it ("Received unexpected
        # C-FIND service message"), which looks like a missing match, or, for
        # the final response, a 30 s stall. This client never serves requests,
        # so only blocking reads (send_c_find's) may take messages.
        take = assoc.dimse.get_msg
        assoc.dimse.get_msg = lambda block=False: take(block) if block else (None, None)
        self.assoc = assoc
        self.associations += 1
        return self

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None

    def __enter__(self) -> "FindClient":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(
        self,
        queries: int,
        *,
        warmup: int = 0,
        seed: int = 7,
        max_seconds: float | None = None,
        min_queries: int = 20,
    ) -> FindRun:
        """``warmup`` untimed queries, then up to ``queries`` timed ones. With
        ``max_seconds``, stops early (after at least ``min_queries``) once that
        much time has gone by: a slow server gets fewer queries, not an
        endless run. A query without an answer is counted, not timed, and the
        run goes on over a new association."""
        from pydicom.dataset import Dataset

        rng = random.Random(seed)
        run = FindRun(keys=self.keys)
        started = time.perf_counter()
        for n in range(warmup + queries):
            if (max_seconds is not None and n >= warmup + min_queries
                    and time.perf_counter() - started > max_seconds):  # fmt: skip
                run.capped = True
                break
            pid = rng.choice(self.ids)
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.PatientID = pid
            for key in self.keys:
                setattr(ds, key, "")
            if self.issuer:  # e.g. a national number's OID: the person at every organisation
                ds.IssuerOfPatientID = self.issuer
            found = 0
            final = None
            t0 = time.perf_counter()
            for status, _identifier in self.assoc.send_c_find(ds, self.model):
                if not status:
                    final = -1  # no response: DIMSE timeout, or the association went away
                    break
                if status.Status in (0xFF00, 0xFF01):
                    found += 1
                else:
                    final = status.Status
            elapsed = time.perf_counter() - t0
            if final == -1:
                run.failed_queries += 1
                if len(run.wrong_examples) < 5:
                    run.wrong_examples.append(f"{pid}: no response after {elapsed:.1f} s")
                if run.failed_queries > 3:
                    raise BenchError(f"C-FIND: {run.failed_queries} queries got no response")
                if self.assoc.is_established:
                    self.assoc.abort()
                self.open()
                continue
            if final != 0x0000:
                raise BenchError(f"C-FIND ended with status 0x{final:04X}" if final is not None else "C-FIND: no final status")
            if n >= warmup:
                run.latencies_ms.append(round(elapsed * 1000, 4))
                run.matches += found
                if found != self.patients[pid]:
                    run.wrong_counts += 1
                    if len(run.wrong_examples) < 5:
                        run.wrong_examples.append(f"{pid}: {found} studies, expected {self.patients[pid]}")
        return run


def find_latency(aet: str, port: int, patients: dict[str, int], *, queries: int, warmup: int = 20,
                 computed: bool = False, seed: int = 7) -> FindRun:  # fmt: skip
    """Per-query latency of ``queries`` C-FINDs over one association."""
    with FindClient(aet, port, patients, computed=computed) as client:
        return client.run(queries, warmup=warmup, seed=seed)


# --- C-GET ---------------------------------------------------------------------------


def getscu_cmd(aet: str, port: int, study_uid: str, out: Path) -> list[str]:
    return ["getscu", "-S", "-aet", "BENCHSCU", "-aec", aet, "-to", "30", "-ta", "30", "-td", "120",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
            "-od", str(out), "127.0.0.1", str(port)]  # fmt: skip


def get_study(aet: str, port: int, study_uid: str, expected: int, scratch: Path, timeout: float = 600) -> dict[str, Any]:
    """One C-GET of a whole study with getscu; the files land in a temp dir, then go."""
    out = Path(tempfile.mkdtemp(prefix="get-", dir=scratch))
    try:
        started = time.perf_counter()
        proc = subprocess.run(getscu_cmd(aet, port, study_uid, out), capture_output=True, text=True,
                              env=dcmtk_env(), timeout=timeout)  # fmt: skip
        elapsed = time.perf_counter() - started
        files = [p for p in out.iterdir() if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        if proc.returncode != 0 or "E:" in proc.stderr or len(files) != expected:
            raise BenchError(
                f"getscu got {len(files)}/{expected} files, exit {proc.returncode}: {proc.stderr[-1500:]}"
            )
        return {"seconds": elapsed, "instances": len(files), "bytes": size}
    finally:
        shutil.rmtree(out, ignore_errors=True)
