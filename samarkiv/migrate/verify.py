"""Verification: every migrated study compared with the source again.

Per study: the source's instances (C-FIND/QIDO at IMAGE level, or the folder)
against the index, instance counts per series and SOP Instance UIDs; then,
where the source serves bytes again, a sample (or all) compared by SHA-256
of the dataset bytes after the File Meta (PS3.10 7.1), the part that travels
unchanged. Missing instances are pulled again once, then listed.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

from .mapping import dataset_sha256
from .job import PlannedInstance, PlannedStudy
from .runner import Runner
from .sources import SourceError


@dataclass
class VerifyResult:
    studies: int = 0
    verified: int = 0
    compared_bytes: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (study, sop)
    mismatched: list[tuple[str, str, str]] = field(default_factory=list)  # (study, sop, why)
    series_mismatch: list[tuple[str, str, int, int]] = field(default_factory=list)  # (study, series, source, archive)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched and not self.series_mismatch


def verify_job(runner: Runner, sample: int | None, seed: int = 0) -> VerifyResult:
    """``sample``: objects per study to compare by checksum (None: all, 0: none)."""
    jobs, job, archive, source = runner.jobs, runner.job, runner.archive, runner.source
    result = VerifyResult()
    rng = random.Random(seed)
    for study in jobs.studies(job, ["done", "verified", "mismatch", "failed"]):
        result.studies += 1
        try:
            listed = runner._retrying(f"list study {study.pk}", lambda study=study: source.instances(study))
        except SourceError as exc:
            jobs.set_study(study, "mismatch", f"cannot list at the source: {exc}")
            continue
        jobs.plan_study(job, study, listed, set())  # instances new at the source join the plan
        stored = archive.catalog.instances_by_uid([i.sop_instance_uid for i in listed])
        if len(stored) < len(listed):
            runner._pull_missing(study, previous=study.attempts)  # pulled again (with retries), then listed
            stored = archive.catalog.instances_by_uid([i.sop_instance_uid for i in listed])
        problems = _compare_counts(study, listed, stored, result)
        candidates = [i for i in listed if i.sop_instance_uid in stored]
        if sample is not None and sample < len(candidates):
            candidates = rng.sample(candidates, sample)
        source_digests = jobs.source_digests(study) if runner.mapping.active else {}
        for instance in candidates:
            why = _compare_bytes(runner, study, instance, stored[instance.sop_instance_uid], source_digests, result)
            if why:
                problems += 1
                result.mismatched.append((study.study_instance_uid, instance.sop_instance_uid, why))
                jobs.mark_instances(study, [instance.sop_instance_uid], "mismatch", why)
        if problems:
            jobs.set_study(study, "mismatch", f"{problems} difference(s) with the source")
        else:
            result.verified += 1
            jobs.set_study(study, "verified", None)
    return result


def _compare_counts(study: PlannedStudy, listed: list[PlannedInstance], stored: dict, result: VerifyResult) -> int:  # type: ignore[type-arg]
    expected = Counter(i.series_instance_uid for i in listed)
    held = Counter(i.series_instance_uid for i in listed if i.sop_instance_uid in stored)
    problems = 0
    for series, count in expected.items():
        if held[series] != count:
            result.series_mismatch.append((study.study_instance_uid, series, count, held[series]))
    for instance in listed:
        if instance.sop_instance_uid not in stored:
            problems += 1
            result.missing.append((study.study_instance_uid, instance.sop_instance_uid))
    return problems


def _compare_bytes(runner: Runner, study, instance, stored, source_digests, result: VerifyResult) -> str | None:  # type: ignore[no-untyped-def]
    """Why the stored object differs from the source's, or None."""
    for _attempt in range(2):  # a mismatch is fetched once more before it is listed
        try:
            fetched = runner._retrying("fetch", lambda: runner.source.fetch(study, instance))
        except SourceError as exc:
            return f"cannot fetch from the source: {exc}"
        if fetched is None:
            return None  # this source cannot serve bytes again: counts and UIDs only
        result.compared_bytes += len(fetched)
        source_digest = hashlib.sha256(fetched).hexdigest()
        if instance.sop_instance_uid in source_digests:
            ours = source_digests[instance.sop_instance_uid]  # coerced: compare with what the source sent
        else:
            with runner.archive.open_instance(stored) as f:
                ours = dataset_sha256(f.read())
        if ours == source_digest:
            return None
    return "checksum differs from the source"
