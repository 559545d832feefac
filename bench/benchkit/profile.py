"""Summarise py-spy's collapsed stacks (``--format raw``): where a server's time goes.

    python bench/benchkit/profile.py bench/results/profile-ingest-1.txt [--top 30]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def _frame(raw: str) -> str:
    """``handle_store (samarkiv/dimse/store.py:42)`` -> ``handle_store (store.py)``."""
    m = _FRAME.match(raw.strip())
    if not m:
        return raw.strip()
    file = m.group("file")
    parts = file.split("/")
    for anchor in ("site-packages", "samarkiv", "lib"):
        if anchor in parts:
            idx = len(parts) - 1 - parts[::-1].index(anchor)
            file = "/".join(parts[idx + 1 :] if anchor != "samarkiv" else parts[idx:])
            break
    return f"{m.group('func')} ({file})"


def summarise(path: Path, top: int = 25) -> dict[str, object]:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        count = int(m.group("count"))
        frames = [_frame(f) for f in m.group("stack").split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count

    def pct(c: int) -> float:
        return round(100.0 * c / total, 1) if total else 0.0

    return {
        "samples": total,
        "self": [(f, pct(c)) for f, c in own.most_common(top)],
        "inclusive": [(f, pct(c)) for f, c in inclusive.most_common(top)],
    }


def format_summary(summary: dict[str, object], title: str = "") -> str:
    lines = [f"profile {title}: {summary['samples']} samples (non-idle threads)"]
    lines.append("  inclusive %  function")
    for f, p in summary["inclusive"]:  # type: ignore[union-attr]
        lines.append(f"  {p:10.1f}  {f}")
    lines.append("  self %       function")
    for f, p in summary["self"]:  # type: ignore[union-attr]
        lines.append(f"  {p:10.1f}  {f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print(format_summary(summarise(args.raw, args.top), args.raw.name))


if __name__ == "__main__":
    main()
