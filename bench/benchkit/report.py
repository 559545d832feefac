"""The table printed at the end of a run, the targets, and the PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIND_TARGET_MS = 10.0


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _error(tree: Any, *path: str) -> str | None:
    """The first recorded error on the way down ``path``."""
    for depth in range(len(path) + 1):
        node = _get(tree, *path[:depth])
        if isinstance(node, dict) and "error" in node:
            return str(node["error"])
    return None


def _cell(tree: Any, path: tuple[str, ...], fmt: str) -> str:
    value = _num(_get(tree, *path))
    if value is not None:
        return format(value, fmt)
    return "failed" if _error(tree, *path[:-1]) else "-"


def _ratio(ours: float | None, theirs: float | None, higher_is_better: bool) -> str:
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return "-"
    factor = ours / theirs if higher_is_better else theirs / ours
    return f"{factor:.2f}x faster" if factor >= 1 else f"{1 / factor:.2f}x slower"


def targets(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, verdict, detail) for the three goals."""
    r = report["results"]
    out = []
    s1 = _num(_get(r, "ingest", "samarkiv", "1", "per_second"))
    o1 = _num(_get(r, "ingest", "orthanc", "1", "per_second"))
    if s1 is not None and o1 is not None:
        out.append(("ingest >= 2x Orthanc (1 association)", "MET" if s1 >= 2 * o1 else "MISSED", f"{s1 / o1:.2f}x"))
    else:
        out.append(("ingest >= 2x Orthanc (1 association)", "NOT MEASURED", _error(r, "ingest", "samarkiv") or _error(r, "ingest", "orthanc") or ""))
    for db in ("sqlite", "postgresql"):
        phase = "find-sqlite" if db == "sqlite" else "find-postgres"
        n = _get(r, phase, "catalogue", "instances")
        name = f"C-FIND p50 < {FIND_TARGET_MS:g} ms, {db}" + (f", {n:,} instances" if n else "")
        for key, label in ((f"samarkiv-{db}", name), (f"samarkiv-{db}-national", name.replace("C-FIND", "C-FIND by personnummer"))):
            p50 = _num(_get(r, phase, key, "basic", "p50_ms"))
            wrong = _get(r, phase, key, "basic", "wrong_counts")
            if p50 is None:
                if key == f"samarkiv-{db}":
                    out.append((label, "NOT MEASURED", _error(r, phase, key, "basic") or ""))
            elif wrong:  # fast wrong answers are no answers
                out.append((label, "INVALID", f"{p50:.2f} ms, but {wrong} answers with a wrong count"))
            else:
                out.append((label, "MET" if p50 < FIND_TARGET_MS else "MISSED", f"{p50:.2f} ms"))
    sg = _num(_get(r, "get", "samarkiv", "per_second"))
    og = _num(_get(r, "get", "orthanc", "per_second"))
    if sg is not None and og is not None:
        out.append(("C-GET >= Orthanc's rate", "MET" if sg >= og else "MISSED", f"{sg / og:.2f}x"))
    else:
        out.append(("C-GET >= Orthanc's rate", "NOT MEASURED", _error(r, "get", "samarkiv") or _error(r, "get", "orthanc") or ""))
    return out


def _size(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n:,}"


def table_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    r = report["results"]
    rows: list[tuple[str, str, str, str]] = []
    ing = r.get("ingest")
    if ing:
        n = ing.get("instances")
        par = str(ing.get("parallel", 4))
        for key, label in (("1", "1 association"), (par, f"{par} associations")):
            for unit, field, fmt in (("instances/s", "per_second", ".1f"), ("MB/s", "mb_per_second", ".2f")):
                rows.append((
                    f"C-STORE {n} inst, {label} ({unit})",
                    _cell(ing, ("samarkiv", key, field), fmt),
                    _cell(ing, ("orthanc", key, field), fmt),
                    _ratio(_num(_get(ing, "samarkiv", key, field)), _num(_get(ing, "orthanc", key, field)), True),
                ))  # fmt: skip
    for phase, db in (("find-sqlite", "sqlite"), ("find-postgres", "postgresql")):
        f = r.get(phase)
        if not f:
            continue
        cat = f.get("catalogue", {})
        size = f"{_size(cat.get('instances', 0))} inst"
        orth = "orthanc-big-index-only"
        for variant, vlabel in (("basic", ""), ("computed", " +computed keys")):
            for pct in ("p50", "p95"):
                ours = _num(_get(f, f"samarkiv-{db}", variant, f"{pct}_ms"))
                theirs = _num(_get(f, orth, variant, f"{pct}_ms"))
                rows.append((
                    f"C-FIND {pct}, {db}, {size}{vlabel} (ms)",
                    _cell(f, (f"samarkiv-{db}", variant, f"{pct}_ms"), ".2f"),
                    _cell(f, (orth, variant, f"{pct}_ms"), ".2f") if db == "sqlite" else "n/a",
                    _ratio(ours, theirs, False),
                ))  # fmt: skip
        for pct in ("p50", "p95"):
            if _get(f, f"samarkiv-{db}-national", "basic", f"{pct}_ms") is not None:
                rows.append((f"C-FIND {pct}, {db}, {size}, by personnummer, 3 organisations (ms)",
                             _cell(f, (f"samarkiv-{db}-national", "basic", f"{pct}_ms"), ".2f"), "n/a", ""))  # fmt: skip
    fs = r.get("find-sqlite") or {}
    big = _size((fs.get("catalogue") or {}).get("instances", 0))
    small = _get(fs, "orthanc-small-default", "instances")
    small = f"{small:,}" if isinstance(small, int) else "?"
    for key, label in (("orthanc-big-index-only-analyzed", f"Orthanc index-only, {big} index after ANALYZE"),
                       ("orthanc-big-default", f"Orthanc defaults, {big} index, sent patients"),
                       ("orthanc-small-default", f"Orthanc defaults, {small} inst sent")):  # fmt: skip
        if key in fs:
            for pct in ("p50", "p95"):
                rows.append((f"C-FIND {pct}, {label} (ms)", "", _cell(fs, (key, "basic", f"{pct}_ms"), ".2f"), ""))
    g = r.get("get")
    if g:
        n = g.get("instances")
        for unit, field, fmt in (("instances/s", "per_second", ".1f"), ("MB/s", "mb_per_second", ".2f")):
            rows.append((
                f"C-GET study of {n} inst ({unit})",
                _cell(g, ("samarkiv", field), fmt),
                _cell(g, ("orthanc", field), fmt),
                _ratio(_num(_get(g, "samarkiv", field)), _num(_get(g, "orthanc", field)), True),
            ))  # fmt: skip
    return rows


def print_table(report: dict[str, Any]) -> str:
    rows = table_rows(report)
    head = ("measurement", "samarkiv", "Orthanc", "samarkiv vs Orthanc")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(4)]
    lines = []
    fmt = f"{{:<{widths[0]}}}  {{:>{widths[1]}}}  {{:>{widths[2]}}}  {{:<{widths[3]}}}"
    lines.append(fmt.format(*head))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt.format(*row) for row in rows)
    if any(row[0].startswith("C-FIND") and row[2] not in ("-", "n/a", "", "failed") for row in rows):
        lines.append("C-FIND, Orthanc column: the same catalogue written into Orthanc's SQLite index, answered with")
        lines.append('  "StorageAccessOnFind": "Never" (from the index, as samarkiv does); Orthanc runs no PostgreSQL index here.')
    lines.append("")
    lines.append("targets:")
    for name, verdict, detail in targets(report):
        lines.append(f"  {verdict:<12} {name}  ({detail})" if detail else f"  {verdict:<12} {name}")
    odd = _odd_answers(report["results"])
    if odd:
        lines.append("")
        lines.append("C-FIND answers that were not right (study count per Patient ID checked on every query):")
        lines.extend(f"  {path}: {msg}" for path, msg in odd)
    errors = _errors(report["results"])
    if errors:
        lines.append("")
        lines.append("failures:")
        lines.extend(f"  {path}: {msg[:300]}" for path, msg in errors)
    env = report.get("environment", {})
    lines.append("")
    lines.append(
        f"samarkiv {env.get('samarkiv_revision')} (find.py placeholder: {env.get('find_py_placeholder')}, "
        f"retrieve.py placeholder: {env.get('retrieve_py_placeholder')}); {env.get('orthanc')}; {env.get('dcmtk')}; "
        f"PostgreSQL {env.get('postgresql')}; {env.get('cpus')} CPUs"
    )
    text = "\n".join(lines)
    print(text)
    return text


def _odd_answers(results: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for phase in ("find-sqlite", "find-postgres"):
        for key, entry in (results.get(phase) or {}).items():
            if not isinstance(entry, dict):
                continue
            for variant in ("basic", "computed"):
                res = entry.get(variant)
                if isinstance(res, dict) and (res.get("wrong_counts") or res.get("failed_queries")):
                    examples = "; ".join(res.get("wrong_examples", [])[:3])
                    out.append((f"{key}/{variant}", f"{res.get('wrong_counts', 0)} wrong study counts, "
                                f"{res.get('failed_queries', 0)} unanswered of {res.get('queries')} (e.g. {examples})"))  # fmt: skip
    return out


def _errors(tree: Any, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(tree, dict):
        if "error" in tree and isinstance(tree["error"], str):
            out.append((prefix or "run", tree["error"]))
        for key, value in tree.items():
            if key != "error":
                out.extend(_errors(value, f"{prefix}/{key}" if prefix else key))
    return out


def write_plot(report: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return None
    r = report["results"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6), gridspec_kw={"width_ratios": [1, 1.7, 0.8]})
    colours = {"samarkiv": "#2b6cb0", "Orthanc": "#dd6b20"}

    def bars(ax, groups: list[str], series: dict[str, list[float | None]], ylabel: str, title: str) -> None:  # type: ignore[no-untyped-def]
        width = 0.8 / max(1, len(series))
        for k, (name, values) in enumerate(series.items()):
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
            vals = [v if v is not None else 0 for v in values]
            drawn = ax.bar(xs, vals, width, label=name, color=colours.get(name))
            for rect, v in zip(drawn, values):
                ax.annotate("n/a" if v is None else f"{v:.3g}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                            ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.margins(y=0.12)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)

    ing = r.get("ingest") or {}
    par = str(ing.get("parallel", 4))
    if not ing:
        axes[0].set_axis_off()
    else:
        bars(axes[0], ["1 association", f"{par} associations"],
             {"samarkiv": [_num(_get(ing, "samarkiv", k, "per_second")) for k in ("1", par)],
              "Orthanc": [_num(_get(ing, "orthanc", k, "per_second")) for k in ("1", par)]},
             "instances/s (higher is better)", f"C-STORE ingest, {ing.get('instances', '?')} CT_small instances")  # fmt: skip

    fs, fp = r.get("find-sqlite") or {}, r.get("find-postgres") or {}
    groups, p50, p95 = [], [], []
    for label, tree, key in (("samarkiv\nSQLite", fs, "samarkiv-sqlite"), ("samarkiv\nPostgreSQL", fp, "samarkiv-postgresql"),
                             ("samarkiv\nSQLite\npersonnummer", fs, "samarkiv-sqlite-national"),
                             ("samarkiv\nPostgreSQL\npersonnummer", fp, "samarkiv-postgresql-national"),
                             ("Orthanc\nindex-only", fs, "orthanc-big-index-only"),
                             ("Orthanc\nindex-only\n+ ANALYZE", fs, "orthanc-big-index-only-analyzed"),
                             ("Orthanc\ndefaults\n(sent patients)", fs, "orthanc-big-default")):  # fmt: skip
        if key in tree:
            groups.append(label)
            p50.append(_num(_get(tree, key, "basic", "p50_ms")))
            p95.append(_num(_get(tree, key, "basic", "p95_ms")))
    n = (fs.get("catalogue") or fp.get("catalogue") or {}).get("instances", 0)
    if groups:
        ax = axes[1]
        width = 0.38
        for k, (name, values, colour) in enumerate((("p50", p50, "#4a5568"), ("p95", p95, "#a0aec0"))):
            xs = [i + (k - 0.5) * width for i in range(len(groups))]
            drawn = ax.bar(xs, [v or 0.0 for v in values], width, label=name, color=colour)
            for rect, v in zip(drawn, values):
                ax.annotate("n/a" if v is None else f"{v:.3g}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                            ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.axhline(FIND_TARGET_MS, color="#c53030", linestyle="--", linewidth=1, label=f"target p50 < {FIND_TARGET_MS:g} ms")
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.margins(y=0.15)
        ax.set_yscale("log")
        tallest = max([v for v in p50 + p95 if v] or [10.0])
        ax.set_ylim(1, max(tallest, FIND_TARGET_MS) * 6)  # room for the legend above the bars
        ax.set_ylabel("ms per query, log scale (lower is better)")
        ax.set_title(f"C-FIND study level by PatientID, {n:,} instances", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    else:
        axes[1].set_axis_off()

    g = r.get("get") or {}
    if g:
        ax = axes[2]
        names = ["samarkiv", "Orthanc"]
        rates = [_num(_get(g, k, "per_second")) for k in ("samarkiv", "orthanc")]
        mbs = [_num(_get(g, k, "mb_per_second")) for k in ("samarkiv", "orthanc")]
        drawn = ax.bar(range(2), [v or 0 for v in rates], 0.6, color=[colours[n] for n in names])
        for rect, v, mb in zip(drawn, rates, mbs):
            text = "n/a" if v is None else f"{v:.0f}/s\n{mb:.1f} MB/s"
            ax.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(2), names)
        ax.margins(y=0.15)
        ax.set_ylabel("instances/s (higher is better)")
        ax.set_title(f"C-GET of a {g.get('instances', '?')}-instance study (getscu)", fontsize=10)
    else:
        axes[2].set_axis_off()

    env = report.get("environment", {})
    fig.suptitle(f"samarkiv {env.get('samarkiv_revision')} vs {env.get('orthanc')} — {report.get('mode')} run "
                 f"{report.get('started', '')[:16]}, {env.get('cpus')} CPUs", fontsize=11)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
