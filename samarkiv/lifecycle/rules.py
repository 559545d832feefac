"""Lifecycle rules from the config file, and the instances each one selects.

In the config file (checked when settings load; tier names when the archive opens)::

    [[lifecycle]]
    name = "to-long"            # optional; default "<from>-to-<to>"
    from = "short"
    to = "long"
    action = "move"             # move (default) | copy (a second copy, e.g. a replica) |
                                # delete (drop from a cache tier where a copy exists)
    older_than_days = 365
    age_by = "study_date"       # or "stored": the study's last store
    not_accessed_days = 90      # optional
    compress = "jpeg-ls"        # optional, move only: "jpeg-ls" or "jpeg2000" (lossless)
    recall_on_access = true     # optional: reading the study brings it back to "from"

    [tier_capacity]
    short = "2 TB"              # or bytes; for `samarkiv capacity`

Where an object is, is told by its blob key: ``long:2026/...`` is on the tier
``long``; unprefixed keys are on the first tier (no migration of old rows).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydicom.uid import JPEG2000Lossless, JPEGLSLossless
from sqlalchemy import and_, exists, func, not_, or_, select
from sqlalchemy.sql.elements import ColumnElement

from ..index.lifecycle_schema import lifecycle_copies, study_access
from ..index.schema import instances, series, studies

INLINE_PREFIX = "db/"
COMPRESSIONS = {"jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}
ACTIONS = ("move", "copy", "delete")
AGE_BY = ("study_date", "stored")
_KEYS = {
    "name", "from", "to", "action", "older_than_days", "age_by", "not_accessed_days", "compress",
    "recall_on_access",
}  # fmt: skip
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40, "PIB": 1 << 50}  # fmt: skip


def _config_error(message: str) -> Exception:
    from ..config import ConfigError

    return ConfigError(message)


@dataclass(frozen=True)
class LifecycleRule:
    """One ``[[lifecycle]]`` table."""

    name: str
    source: str
    target: str | None
    action: str = "move"
    older_than_days: int = 0
    age_by: str = "study_date"
    not_accessed_days: int | None = None
    compress: str | None = None  # a transfer syntax UID
    recall_on_access: bool = False

    @property
    def recall_name(self) -> str:
        return f"{self.name}:recall"


def parse_rules(value: Any) -> tuple[LifecycleRule, ...]:
    if isinstance(value, LifecycleRule):
        value = [value]
    if not isinstance(value, list | tuple):
        raise _config_error("lifecycle must be a list of [[lifecycle]] tables")
    rules = tuple(item if isinstance(item, LifecycleRule) else _parse_rule(item) for item in value)
    names = [r.name for r in rules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _config_error(f"lifecycle rule name(s) used twice: {', '.join(twice)}")
    return rules


def _days(table: Mapping[str, Any], key: str, where: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _config_error(f"{where}: {key} must be a whole number of days >= 0")
    return value


def _parse_rule(table: Any) -> LifecycleRule:
    if not isinstance(table, Mapping):
        raise _config_error(f"a lifecycle rule must be a table, not {type(table).__name__}")
    source, target = table.get("from"), table.get("to")
    where = f"lifecycle rule {table.get('name') or f'{source}-to-{target}'!r}"
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise _config_error(f"{where}: unknown setting(s) {', '.join(unknown)}")
    action = table.get("action", "move")
    if action not in ACTIONS:
        raise _config_error(f"{where}: action must be one of {', '.join(ACTIONS)}, not {action!r}")
    if not isinstance(source, str) or not source:
        raise _config_error(f"{where}: 'from' (the tier to take objects from) is required")
    if action == "delete":
        if target is not None:
            raise _config_error(f"{where}: a delete rule has no 'to'")
    elif not isinstance(target, str) or not target or target == source:
        raise _config_error(f"{where}: 'to' must name another tier")
    age_by = table.get("age_by", "study_date")
    if age_by not in AGE_BY:
        raise _config_error(f"{where}: age_by must be 'study_date' or 'stored', not {age_by!r}")
    compress = table.get("compress")
    if compress is not None:
        if compress not in COMPRESSIONS:
            raise _config_error(f"{where}: compress must be one of {', '.join(COMPRESSIONS)}, not {compress!r}")
        if action != "move":
            raise _config_error(f"{where}: only a move compresses (a copy must stay identical)")
    recall = table.get("recall_on_access", False)
    if not isinstance(recall, bool):
        raise _config_error(f"{where}: recall_on_access must be true or false")
    not_accessed = _days(table, "not_accessed_days", where)
    if recall and (action != "move" or not not_accessed):
        raise _config_error(
            f"{where}: recall_on_access needs a move rule with not_accessed_days "
            "(or a recalled study would move straight back)"
        )
    name = table.get("name") or (f"{source}-to-{target}" if target else f"{source}-delete")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]{1,48}$", name):
        raise _config_error(f"{where}: name must be letters, digits, '.', '-' or '_'")
    return LifecycleRule(
        name=name,
        source=source,
        target=target,
        action=action,
        older_than_days=_days(table, "older_than_days", where) or 0,
        age_by=age_by,
        not_accessed_days=not_accessed,
        compress=COMPRESSIONS[compress] if compress else None,
        recall_on_access=recall,
    )


def parse_size(value: Any, where: str) -> int:
    """Bytes from an int or a string like "2 TB", "500GiB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise _config_error(f"{where}: {value!r} is not a size (e.g. 2000000000000 or \"2 TB\")")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_capacity(value: Any) -> tuple[tuple[str, int], ...]:
    if isinstance(value, tuple):
        return value
    if not isinstance(value, Mapping):
        raise _config_error("tier_capacity must be a table: [tier_capacity] short = \"2 TB\"")
    return tuple((str(name), parse_size(size, f"tier_capacity.{name}")) for name, size in value.items())


def check_rules(rules: tuple[LifecycleRule, ...], tier_names: list[str]) -> None:
    """Rules may name only configured tiers (ConfigError otherwise)."""
    for rule in rules:
        for tier in (rule.source, rule.target):
            if tier is not None and tier not in tier_names:
                raise _config_error(
                    f"lifecycle rule {rule.name!r}: no tier named {tier!r} (tiers: {', '.join(tier_names)})"
                )


# --- placement: tiers by blob key ----------------------------------------------------


def tier_of(key: str, first: str) -> str | None:
    """The tier holding ``key``; None for the write-back journal (``db/``)."""
    if key.startswith(INLINE_PREFIX):
        return None
    tier, colon, _rest = key.partition(":")
    return tier if colon else first


def new_key(tier: str, first: str, now: datetime) -> str:
    """A fresh blob key on ``tier`` (partitioned by hour, like the store path's)."""
    key = f"{now:%Y/%m/%d/%H}/{uuid.uuid4().hex}.dcm"
    return key if tier == first else f"{tier}:{key}"


def in_tier(column: Any, tier: str, first: str) -> ColumnElement[bool]:
    """SQL: the blob key ``column`` is on ``tier``."""
    if tier == first:
        return and_(not_(column.contains(":", autoescape=True)), not_(column.startswith(INLINE_PREFIX)))
    return column.startswith(f"{tier}:", autoescape=True)


def _last_stored():  # type: ignore[no-untyped-def]
    """Per study: when its newest instance was stored."""
    return (
        select(series.c.study_pk.label("study_pk"), func.max(instances.c.stored_at).label("last_stored"))
        .select_from(instances)
        .join(series, instances.c.series_pk == series.c.pk)
        .group_by(series.c.study_pk)
        .subquery("last_stored")
    )


def candidates(rule: LifecycleRule, first: str, now: datetime, horizon_days: int = 0):  # type: ignore[no-untyped-def]
    """SELECT (pk, blob_key, size, study_instance_uid) of the instances ``rule``
    acts on ``horizon_days`` from ``now`` (0: now), assuming no new access."""
    at = now + timedelta(days=horizon_days)
    cutoff = at - timedelta(days=rule.older_than_days)
    last = _last_stored()
    query = (
        select(instances.c.pk, instances.c.blob_key, instances.c.size, studies.c.study_instance_uid)
        .select_from(instances)
        .join(series, instances.c.series_pk == series.c.pk)
        .join(studies, series.c.study_pk == studies.c.pk)
        .join(last, last.c.study_pk == studies.c.pk)
        .where(in_tier(instances.c.blob_key, rule.source, first))
    )
    if rule.age_by == "study_date":
        dated = and_(studies.c.study_date.is_not(None), studies.c.study_date != "")
        query = query.where(
            or_(
                and_(dated, studies.c.study_date < cutoff.strftime("%Y%m%d")),
                and_(not_(dated), last.c.last_stored < cutoff),
            )
        )
    else:
        query = query.where(last.c.last_stored < cutoff)
    if rule.not_accessed_days:
        query = query.outerjoin(study_access, study_access.c.study_instance_uid == studies.c.study_instance_uid)
        seen = func.coalesce(study_access.c.last_access_at, last.c.last_stored)
        query = query.where(seen < at - timedelta(days=rule.not_accessed_days))
    copies = lifecycle_copies
    if rule.action == "copy":
        query = query.where(
            ~exists().where(and_(copies.c.instance_pk == instances.c.pk, copies.c.tier == rule.target))
        )
    elif rule.action == "delete":  # never the last copy
        query = query.where(
            exists().where(
                and_(copies.c.instance_pk == instances.c.pk, copies.c.sha256 == instances.c.sha256,
                     copies.c.tier != rule.source)
            )
        )  # fmt: skip
    return query.order_by(instances.c.pk)
