"""Searchset Bundles (FHIR R4 bundle.html, search.html#2.21.1.3).

A search answers with a Bundle of type ``searchset``: the ``total`` number
of matches, a ``self`` link naming the parameters that were used, ``first``,
``previous`` and ``next`` links for paging (``_offset`` and ``_count``), one
entry per match (``search.mode = match``) and, when parameters were ignored,
an OperationOutcome entry (``search.mode = outcome``) saying which.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from .errors import operation_outcome
from .search import SearchRequest


def _page_url(search: SearchRequest, offset: int) -> str:
    params = list(search.params)
    if search.summary_count:
        params.append(("_summary", "count"))
    params.append(("_count", str(search.count)))
    if offset:
        params.append(("_offset", str(offset)))
    return f"{search.base}/{search.resource_type}?{urlencode(params)}"


def searchset(search: SearchRequest, total: int, resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The Bundle answering ``search`` with this page of ``resources``."""
    links = [{"relation": "self", "url": _page_url(search, search.offset)}]
    if not search.summary_count and search.count:
        links.append({"relation": "first", "url": _page_url(search, 0)})
        if search.offset > 0:
            links.append({"relation": "previous", "url": _page_url(search, max(search.offset - search.count, 0))})
        if search.offset + search.count < total:
            links.append({"relation": "next", "url": _page_url(search, search.offset + search.count)})
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{search.base}/{resource['resourceType']}/{resource['id']}",
            "resource": resource,
            "search": {"mode": "match"},
        }
        for resource in resources
    ]
    if search.ignored:
        outcome = operation_outcome(
            f"ignored unsupported search parameters: {', '.join(search.ignored)}", "not-supported", "warning"
        )
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    if entries:
        bundle["entry"] = entries
    return bundle
