"""``samarkiv migrate report``: a CSV of every planned instance and an HTML summary.

Outcomes: migrated, present (skipped: already in the archive), failed (with
the reason), mismatch (verification), pending (not yet pulled).
"""

from __future__ import annotations

import csv
from collections import Counter
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from .job import Job, JobStore

OUTCOME_NAMES = {"migrated": "migrated", "present": "skipped (already present)", "failed": "failed", "mismatch": "mismatched", "pending": "pending"}
COLUMNS = ("study_instance_uid", "study_state", "series_instance_uid", "sop_instance_uid", "state", "size", "reason")


def write_report(jobs: JobStore, job: Job, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = jobs.all_instances(job)
    unlisted = [s for s in jobs.studies(job) if not any(r["study_instance_uid"] == s.study_instance_uid for r in rows)]
    csv_path, html_path = folder / f"{job.name}.csv", folder / f"{job.name}.html"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        for study in unlisted:  # a study whose instances could not be listed
            writer.writerow(dict(study_instance_uid=study.study_instance_uid, study_state=study.state, state=study.state, reason=study.message or ""))
    html_path.write_text(_html(jobs, job, rows, unlisted), encoding="utf-8")
    return csv_path, html_path


def _html(jobs: JobStore, job: Job, rows: list[dict], unlisted: list) -> str:  # type: ignore[type-arg]
    progress = jobs.progress(job)
    counts = Counter(r["state"] for r in rows)
    summary = "".join(f"<tr><td>{escape(OUTCOME_NAMES.get(k, k))}</td><td>{v:,}</td></tr>" for k, v in sorted(counts.items()))
    studies = "".join(f"<tr><td>{escape(k)}</td><td>{v:,}</td></tr>" for k, v in sorted(progress["studies"].items()))
    problems = [r for r in rows if r["state"] in ("failed", "mismatch", "pending")]
    problem_rows = "".join(
        "<tr>" + "".join(f"<td>{escape(str(r.get(c) or ''))}</td>" for c in ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "state", "reason")) + "</tr>"
        for r in problems
    ) + "".join(f"<tr><td>{escape(s.study_instance_uid)}</td><td></td><td></td><td>{escape(s.state)}</td><td>{escape(s.message or '')}</td></tr>" for s in unlisted)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Migration {escape(job.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}</style></head>
<body><h1>Migration {escape(job.name)}</h1>
<p>Source: {escape(job.source_kind)} &middot; state: {escape(job.state)} &middot; report made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC &middot;
{progress['bytes_migrated'] / 1e6:,.1f} MB migrated</p>
<h2>Instances</h2><table><tr><th>outcome</th><th>instances</th></tr>{summary}</table>
<h2>Studies</h2><table><tr><th>state</th><th>studies</th></tr>{studies}</table>
<h2>Failed, mismatched and pending ({len(problems) + len(unlisted)})</h2>
<table><tr><th>study</th><th>series</th><th>SOP instance</th><th>state</th><th>reason</th></tr>{problem_rows}</table>
</body></html>
"""
