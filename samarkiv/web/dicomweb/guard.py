"""Access control at the DICOMweb and WADO-URI doors (issue 5; samarkiv/access/gate.py).

Every request naming a study passes :func:`authorise_study` once, before
anything about the study is looked up, with the action its answer is:

* ``view`` (the view right): metadata, frames, bulk data, rendered and
  thumbnail resources, WADO-URI rendered images — what a viewer shows;
* ``download`` (the download right): the objects themselves, Part 10 bytes
  (``application/dicom`` retrieve, ``application/zip``, WADO-URI
  ``contentType=application/dicom``);
* ``store`` (the annotate right): STOW-RS into an existing study another
  organisation owns (stow.py).

A refused study is a 403 problem document (PS3.18 8.6; RFC 9457) whose words
are the same whether the study exists or not, so nothing is revealed about
what is stored; the gate audits every decision, allowed or denied, once per
request and study. Searches (QIDO-RS) are filtered in SQL instead (qido.py).
"""

from __future__ import annotations

from fastapi import Request

from ...access.http import principal_of
from ...access.policy import Decision
from ...access.principal import Principal
from ...core.archive import Archive
from .errors import DicomWebError

DENIED = "access to this study is not permitted"


def caller(request: Request) -> Principal:
    """The authenticated principal (the middleware set it); 401 otherwise."""
    principal = principal_of(request)
    if principal is None:
        raise DicomWebError(
            401,
            "authentication required",
            headers={"WWW-Authenticate": 'Bearer realm="samarkiv"'},
        )
    return principal


def authorise_study(
    archive: Archive, request: Request, action: str, study_uid: str
) -> Decision:
    """The gate's decision for ``action`` on ``study_uid`` (audited); 403 when refused."""
    result = archive.gate.authorise(caller(request), action, [study_uid])
    decision = result.allowed.get(study_uid)
    if decision is None:
        raise DicomWebError(403, DENIED, title="Forbidden")
    return decision
