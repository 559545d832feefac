"""The table, targets and PNG of bench/dicomweb_vs_orthanc.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import _cell, _error, _errors, _get, _num, _ratio, _size

QIDO_TARGET_MS = 20.0
METADATA_TARGET_MS = 100.0
STOW_FACTOR = 2.0


def targets(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, verdict, detail) for the goals of the DICOMweb issue."""
    r = report["results"]
    out: list[tuple[str, str, str]] = []

    def compare(name: str, ours: float | None, theirs: float | None, factor: float, why: str | None) -> None:
        if ours is None or theirs is None or theirs <= 0:
            out.append((name, "NOT MEASURED", why or ""))
        else:
            out.append((name, "MET" if ours >= factor * theirs else "MISSED", f"{ours / theirs:.2f}x"))

    compare(f"STOW-RS >= {STOW_FACTOR:g}x Orthanc (1 client)", _num(_get(r, "stow", "samarkiv", "1", "per_second")),
            _num(_get(r, "stow", "orthanc", "1", "per_second")), STOW_FACTOR,
            _error(r, "stow", "samarkiv") or _error(r, "stow", "orthanc"))  # fmt: skip
    for db, phase in (("sqlite", "qido-sqlite"), ("postgresql", "qido-postgres")):
        if phase not in r:
            continue
        p50 = _num(_get(r, phase, f"samarkiv-{db}", "p50_ms"))
        n = _get(r, phase, "catalogue", "instances")
        name = f"QIDO-RS p50 < {QIDO_TARGET_MS:g} ms, {db}" + (f", {n:,} instances" if n else "")
        wrong = _get(r, phase, f"samarkiv-{db}", "wrong_counts")
        if p50 is None:
            out.append((name, "NOT MEASURED", _error(r, phase, f"samarkiv-{db}") or ""))
        elif wrong:  # fast wrong answers are no answers
            out.append((name, "INVALID", f"{p50:.2f} ms, but {wrong} answers with a wrong study count"))
        else:
            out.append((name, "MET" if p50 < QIDO_TARGET_MS else "MISSED", f"{p50:.2f} ms"))
    n = _get(r, "wado", "instances")
    first = _num(_get(r, "wado", "samarkiv", "metadata", "first", "ms"))
    warm = _num(_get(r, "wado", "samarkiv", "metadata", "warm_gzip", "p50_ms"))
    name = f"series metadata < {METADATA_TARGET_MS:g} ms, {n} instances (first request)"
    if first is None:
        out.append((name, "NOT MEASURED", _error(r, "wado", "samarkiv", "metadata") or ""))
    else:
        detail = f"{first:.1f} ms first" + (f", {warm:.1f} ms warm" if warm is not None else "")
        out.append((name, "MET" if first < METADATA_TARGET_MS else "MISSED", detail))
    compare("WADO-RS study retrieve >= Orthanc's rate (MB/s)", _num(_get(r, "wado", "samarkiv", "retrieve", "mb_per_second")),
            _num(_get(r, "wado", "orthanc", "retrieve", "mb_per_second")), 1.0,
            _error(r, "wado", "samarkiv", "retrieve") or _error(r, "wado", "orthanc", "retrieve"))  # fmt: skip
    return out


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    r = report["results"]
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, tree: Any, ours: tuple[str, ...], theirs: tuple[str, ...] | None, fmt: str, higher: bool) -> None:
        rows.append((
            label,
            _cell(tree, ours, fmt),
            _cell(tree, theirs, fmt) if theirs else "n/a",
            _ratio(_num(_get(tree, *ours)), _num(_get(tree, *theirs)) if theirs else None, higher),
        ))  # fmt: skip

    s = r.get("stow")
    if s:
        n, per, par = s.get("instances"), s.get("per_request"), str(s.get("parallel", 4))
        for key, label in (("1", "1 client"), (par, f"{par} clients")):
            for unit, field, fmt in (("instances/s", "per_second", ".1f"), ("MB/s", "mb_per_second", ".2f")):
                row(f"STOW-RS {n} inst, {per}/request, {label} ({unit})", s, ("samarkiv", key, field), ("orthanc", key, field), fmt, True)
    for phase, db in (("qido-sqlite", "sqlite"), ("qido-postgres", "postgresql")):
        q = r.get(phase)
        if not q:
            continue
        size = f"{_size((q.get('catalogue') or {}).get('instances', 0))} inst"
        for pct in ("p50", "p95"):
            theirs = ("orthanc-index-only", f"{pct}_ms") if db == "sqlite" else None
            row(f"QIDO-RS studies by PatientID {pct}, {db}, {size} (ms)", q, (f"samarkiv-{db}", f"{pct}_ms"), theirs, ".2f", False)
    w = r.get("wado")
    if w:
        n = w.get("instances")
        row(f"series metadata, {n} inst, first request (ms)", w, ("samarkiv", "metadata", "first", "ms"),
            ("orthanc", "metadata", "first", "ms"), ".1f", False)  # fmt: skip
        for enc in ("gzip", "identity"):
            row(f"series metadata, {n} inst, warm p50, {enc} (ms)", w, ("samarkiv", "metadata", f"warm_{enc}", "p50_ms"),
                ("orthanc", "metadata", f"warm_{enc}", "p50_ms"), ".1f", False)  # fmt: skip
        for unit, field, fmt in (("MB/s", "mb_per_second", ".2f"), ("instances/s", "per_second", ".1f")):
            row(f"WADO-RS retrieve study of {n} inst ({unit})", w, ("samarkiv", "retrieve", field), ("orthanc", "retrieve", field), fmt, True)
    return rows


def print_table(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    head = ("measurement", "samarkiv", "Orthanc", "samarkiv vs Orthanc")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(4)]
    fmt = f"{{:<{widths[0]}}}  {{:>{widths[1]}}}  {{:>{widths[2]}}}  {{:<{widths[3]}}}"
    lines = [fmt.format(*head), "  ".join("-" * w for w in widths), *(fmt.format(*row) for row in rows)]
    r = report["results"]
    if _num(_get(r, "qido-sqlite", "orthanc-index-only", "p50_ms")) is not None:
        lines.append('QIDO-RS, Orthanc column: the same catalogue written into Orthanc\'s SQLite index, "StorageAccessOnFind": "Never".')
    notes = []
    for name in ("samarkiv", "orthanc"):
        first = _get(r, "wado", name, "metadata", "first")
        if isinstance(first, dict):
            notes.append(f"{name}: {first.get('wire_bytes', 0) / 1e3:.0f} kB {first.get('content_encoding')}")
    if notes:
        lines.append("series metadata, first request as sent: " + "; ".join(notes))
    accepts = [f"{n}: {a}" for n in ("samarkiv", "orthanc") if (a := _get(r, "wado", n, "retrieve", "accept"))]
    if accepts:
        lines.append("retrieve Accept: " + "; ".join(accepts))
    lines += ["", "targets:"]
    for name, verdict, detail in targets(report):
        lines.append(f"  {verdict:<12} {name}  ({detail})" if detail else f"  {verdict:<12} {name}")
    odd = [(f"{phase}/{key}", e) for phase in ("qido-sqlite", "qido-postgres") for key, e in (r.get(phase) or {}).items()
           if isinstance(e, dict) and e.get("wrong_counts")]  # fmt: skip
    if odd:
        lines += ["", "QIDO-RS answers with a wrong study count:"]
        lines += [f"  {path}: {e['wrong_counts']} of {e.get('queries')} (e.g. {'; '.join(e.get('wrong_examples', [])[:3])})" for path, e in odd]
    errors = _errors(r)
    if errors:
        lines += ["", "failures:"]
        lines += [f"  {path}: {msg[:300]}" for path, msg in errors]
    env = report.get("environment", {})
    lines += ["", (f"samarkiv {env.get('samarkiv_revision')}; {env.get('orthanc')} + DICOMweb plugin {env.get('orthanc_dicomweb')}; "
                   f"PostgreSQL {env.get('postgresql')}; httpx {env.get('httpx')}; {env.get('cpus')} CPUs")]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    return text


def write_plot(report: dict[str, Any], path: Path) -> Path | None:
    """Four panels: STOW-RS rate, QIDO-RS latency, series metadata, retrieve rate."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    r = report["results"]
    colours = {"samarkiv": "#2b6cb0", "Orthanc": "#dd6b20"}
    fig, axes = plt.subplots(1, 4, figsize=(19, 5))

    def bars(ax: Any, groups: list[str], series: dict[str, list[float | None]], ylabel: str, title: str,
             target: tuple[float, str] | None = None) -> None:  # fmt: skip
        if not groups or all(v is None for vs in series.values() for v in vs):
            ax.set_axis_off()
            return
        width = 0.8 / len(series)
        for k, (name, values) in enumerate(series.items()):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
            drawn = ax.bar(xs, [v or 0 for v in values], width, label=name, color=colours.get(name))
            for rect, v in zip(drawn, values):
                ax.annotate("n/a" if v is None else f"{v:.3g}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                            ha="center", va="bottom", fontsize=8)  # fmt: skip
        if target:
            ax.axhline(target[0], color="#c53030", linestyle="--", linewidth=1, label=target[1])
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.margins(y=0.15)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)

    s = r.get("stow") or {}
    par = str(s.get("parallel", 4))
    bars(axes[0], ["1 client", f"{par} clients"] if s else [],
         {"samarkiv": [_num(_get(s, "samarkiv", k, "per_second")) for k in ("1", par)],
          "Orthanc": [_num(_get(s, "orthanc", k, "per_second")) for k in ("1", par)]},
         "instances/s (higher is better)", f"STOW-RS, {s.get('instances', '?')} CT_small, {s.get('per_request', '?')}/request")  # fmt: skip

    qs, qp = r.get("qido-sqlite") or {}, r.get("qido-postgres") or {}
    groups, p50, p95 = [], [], []
    for label, tree, key in (("samarkiv\nSQLite", qs, "samarkiv-sqlite"), ("samarkiv\nPostgreSQL", qp, "samarkiv-postgresql"),
                             ("Orthanc\nindex-only", qs, "orthanc-index-only")):  # fmt: skip
        if key in tree:
            groups.append(label)
            p50.append(_num(_get(tree, key, "p50_ms")))
            p95.append(_num(_get(tree, key, "p95_ms")))
    n = (qs.get("catalogue") or qp.get("catalogue") or {}).get("instances", 0)
    colours.update({"p50": "#4a5568", "p95": "#a0aec0"})
    bars(axes[1], groups, {"p50": p50, "p95": p95}, "ms per query (lower is better)",
         f"QIDO-RS studies by PatientID, {n:,} instances", (QIDO_TARGET_MS, f"target p50 < {QIDO_TARGET_MS:g} ms"))  # fmt: skip

    w = r.get("wado") or {}
    keys = (("first", "ms"), ("warm_gzip", "p50_ms"), ("warm_identity", "p50_ms"))
    bars(axes[2], ["first request", "warm, gzip", "warm, identity"] if w else [],
         {"samarkiv": [_num(_get(w, "samarkiv", "metadata", *k)) for k in keys],
          "Orthanc": [_num(_get(w, "orthanc", "metadata", *k)) for k in keys]},
         "ms (lower is better)", f"WADO-RS series metadata, {w.get('instances', '?')} instances",
         (METADATA_TARGET_MS, f"target < {METADATA_TARGET_MS:g} ms"))  # fmt: skip
    bars(axes[3], ["study retrieve"] if w else [],
         {"samarkiv": [_num(_get(w, "samarkiv", "retrieve", "mb_per_second"))],
          "Orthanc": [_num(_get(w, "orthanc", "retrieve", "mb_per_second"))]},
         "MB/s (higher is better)", f"WADO-RS retrieve, study of {w.get('instances', '?')} instances")  # fmt: skip

    env = report.get("environment", {})
    fig.suptitle(f"samarkiv {env.get('samarkiv_revision')} vs {env.get('orthanc')} + DICOMweb {env.get('orthanc_dicomweb')} — "
                 f"{report.get('mode')} run {report.get('started', '')[:16]}, {env.get('cpus')} CPUs", fontsize=11)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
