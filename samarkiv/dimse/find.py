"""C-FIND SCP: Patient Root and Study Root Query/Retrieve Information Model - FIND.

PS3.4 C.4.1. The handler only translates: identifier -> Query (index/query.py)
-> matches -> response identifiers, with the statuses of PS3.4 C.4.1.1.4:

* 0xFF00 pending, one per match (0xFF01 when a key with a value could not be
  matched and was treated as universal);
* 0x0000 success after the last match;
* 0xFE00 when the SCU sent C-CANCEL;
* 0xA900 when the identifier does not fit the information model (bad or
  missing Query/Retrieve Level, missing unique key of a higher level,
  malformed value);
* 0xC001 when the index cannot be read, 0xC000 on any other failure.

Access (issue 5): the association's principal (the user of a negotiated
User Identity, else the calling AE's organisation as a service identity)
goes into the query, whose SQL keeps only what the policy lets it see
(samarkiv/access/gate.py); the query is audited once. Hidden studies are
simply absent, and NumberOfPatientRelated* count only visible studies.

Log lines name levels, keys and peers, never key values (patient data).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from functools import partial

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy.exc import SQLAlchemyError

from ..access.principal import Principal
from ..core.archive import Archive
from ..index.query import Level, Model, Query, QueryError

log = logging.getLogger(__name__)

MODELS: dict[str, Model] = {
    PatientRootQueryRetrieveInformationModelFind: Model.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: Model.STUDY_ROOT,
}

# Identifiers are small: uncompressed syntaxes (and deflate) only.
QUERY_TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]

# PS3.4 C.4.1.2.2.1: the unique keys of the levels above the query level that
# the identifier must carry, per information model (C.6.1.1, C.6.2.1).
HIGHER_UNIQUE_KEYS: dict[tuple[Model, Level], tuple[str, ...]] = {
    (Model.PATIENT_ROOT, Level.PATIENT): (),
    (Model.PATIENT_ROOT, Level.STUDY): ("PatientID",),
    (Model.PATIENT_ROOT, Level.SERIES): ("PatientID", "StudyInstanceUID"),
    (Model.PATIENT_ROOT, Level.IMAGE): ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
    (Model.STUDY_ROOT, Level.STUDY): (),
    (Model.STUDY_ROOT, Level.SERIES): ("StudyInstanceUID",),
    (Model.STUDY_ROOT, Level.IMAGE): ("StudyInstanceUID", "SeriesInstanceUID"),
}

PENDING = 0xFF00
PENDING_WARNING = 0xFF01  # an optional key was not supported for matching
CANCELLED = 0xFE00
IDENTIFIER_MISMATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
INDEX_UNAVAILABLE = 0xC001

_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet"}


def handlers(archive: Archive, ae: AE) -> list[tuple[evt.EventType, Callable]]:
    """Add the FIND presentation contexts to ``ae`` and return the C-FIND handler."""
    # pynetdicom formats every response identifier for a DEBUG log line even
    # when DEBUG is off (server.py already stops the request identifiers).
    _config.LOG_RESPONSE_IDENTIFIERS = False
    for sop_class in MODELS:
        ae.add_supported_context(sop_class, QUERY_TRANSFER_SYNTAXES)
    return [(evt.EVT_C_FIND, partial(handle_find, archive=archive))]


# --- identifier -> Query -------------------------------------------------------------


def _text(elem: DataElement) -> str:
    """An element's value in DICOM string form (backslash between values)."""
    value = elem.value
    if value is None or isinstance(value, (bytes, bytearray)):
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _keys(identifier: Dataset) -> dict[str, str]:
    """Keyword -> matching value; items of a sequence key become ``Sequence.Item``."""
    keys: dict[str, str] = {}
    for elem in identifier:
        if elem.tag.is_private or elem.tag.group in (0x0000, 0x0002) or not elem.keyword:
            continue
        if elem.keyword in _NOT_KEYS:
            continue
        if elem.VR == "SQ":
            keys[elem.keyword] = ""
            for item in list(elem.value or [])[:1]:  # C.2.2.2.6: one item
                keys.update({f"{elem.keyword}.{k}": v for k, v in _keys(item).items() if "." not in k})
            continue
        keys[elem.keyword] = _text(elem)
    return keys


def query_from_identifier(identifier: Dataset, model: Model) -> Query:
    """Translate a C-FIND identifier into a Query; QueryError if it does not fit ``model``."""
    try:
        raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        keys = _keys(identifier)
    except Exception:  # noqa: BLE001 - pydicom decodes lazily and may raise anything
        raise QueryError("the identifier cannot be decoded") from None
    if not raw_level:
        raise QueryError("Query/Retrieve Level (0008,0052) is missing", "QueryRetrieveLevel")
    try:
        level = Level(raw_level)
    except ValueError:
        raise QueryError("unknown Query/Retrieve Level", "QueryRetrieveLevel") from None
    if (model, level) not in HIGHER_UNIQUE_KEYS:
        raise QueryError(f"{model.value} has no {level.value} level", "QueryRetrieveLevel")
    for keyword in HIGHER_UNIQUE_KEYS[(model, level)]:
        if not keys.get(keyword, "").strip():
            raise QueryError(
                f"{level.value} query needs a value for {keyword} (PS3.4 C.4.1.2.2.1)", keyword
            )
    return Query(level=level, keys=keys, model=model)


# --- the handler -------------------------------------------------------------------


def _failure(code: int, comment: str, keyword: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    if keyword and "." not in keyword and tag_for_keyword(keyword) is not None:
        status.OffendingElement = [tag_for_keyword(keyword)]
    return status


def _identifier(event: evt.Event) -> Dataset:
    try:
        return event.identifier
    except Exception:  # noqa: BLE001 - undecodable bytes from the peer
        raise QueryError("the identifier cannot be decoded") from None


def _peer(event: evt.Event) -> str:
    try:
        return str(event.assoc.requestor.ae_title)
    except AttributeError:
        return "-"


def principal_of(archive: Archive, assoc: object) -> Principal | None:
    """Who acts on a pynetdicom association: the user of its negotiated User
    Identity (samarkiv/access/dimse.py), else the calling AE's service identity
    (``Archive.service_principal``, as on the fast path); None: no organisation."""
    from ..access.dimse import association_principal

    try:
        principal = association_principal(archive, assoc)
    except AttributeError:
        return None
    if principal is None or principal.kind != "service":
        return principal
    requestor = getattr(assoc, "requestor", None)
    return archive.service_principal(str(requestor.ae_title).strip(), getattr(requestor, "address", None))


def handle_find(event: evt.Event, archive: Archive) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """EVT_C_FIND handler: yields (status, identifier) pairs (PS3.4 C.4.1.3.1)."""
    model = MODELS.get(str(event.request.AffectedSOPClassUID))
    if model is None:  # pragma: no cover - pynetdicom only routes negotiated classes
        yield _failure(IDENTIFIER_MISMATCH, "unsupported SOP class"), None
        return
    principal = principal_of(archive, event.assoc)
    yield from answer(
        archive, lambda: _identifier(event), model, _peer(event), lambda: event.is_cancelled, principal=principal
    )


def _audited_keys(query: Query) -> dict[str, str]:
    """The matching keys of a query (those with a value), for its audit record."""
    return {k: v for k, v in query.keys.items() if v}


def answer(
    archive: Archive,
    identifier: Callable[[], Dataset],
    model: Model,
    peer: str,
    is_cancelled: Callable[[], bool],
    *,
    principal: Principal | None,
) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """The C-FIND responses to ``identifier()`` as (status, identifier) pairs,
    only of what ``principal`` may see (None: nobody known, refused).

    Independent of pynetdicom, so any DIMSE front end can serve C-FIND with it.
    ``identifier`` may raise QueryError when the request cannot be decoded.
    """
    started = time.perf_counter()
    matches = 0
    if principal is None:  # the listener rejects such associations; never answer anonymously
        yield _failure(UNABLE_TO_PROCESS, "not authorised"), None
        return
    try:
        try:
            query = query_from_identifier(identifier(), model)
            detail = {"door": "C-FIND", "model": model.value, "level": query.level.value, "keys": _audited_keys(query)}
            prepared, scope = archive.prepare_query(query, peer, principal=principal, detail=detail)
        except QueryError as exc:
            log.warning("C-FIND from %s refused: %s", peer, exc)
            yield _failure(IDENTIFIER_MISMATCH, str(exc), exc.keyword), None
            return
        archive.metrics.queries.labels(query.level.value.lower()).inc()
        if prepared.unmatched:
            log.info("C-FIND from %s: no matching on %s (treated as universal)", peer, ", ".join(prepared.unmatched))
        pending = PENDING_WARNING if prepared.unmatched else PENDING
        retrieve_aet = "RetrieveAETitle" in query.keys
        for match in prepared.run(archive.engine):
            if is_cancelled():
                log.info("C-FIND from %s cancelled after %d match(es)", peer, matches)
                yield CANCELLED, None
                return
            if retrieve_aet:
                match.RetrieveAETitle = archive.settings.aet
            matches += 1
            yield pending, scope.relabel(match)
        log.info(
            "C-FIND %s %s from %s: %d match(es) in %.1f ms",
            model.value, query.level.value, peer, matches, (time.perf_counter() - started) * 1000,
        )  # fmt: skip
    except SQLAlchemyError as exc:
        log.error("C-FIND from %s failed: index error %s", peer, type(exc).__name__)
        log.debug("index error detail", exc_info=True)
        archive.metrics.errors.labels("query-index").inc()
        yield _failure(INDEX_UNAVAILABLE, "the index cannot be read"), None
    except Exception as exc:  # noqa: BLE001 - answer a status, never a traceback
        log.error("C-FIND from %s failed: %s", peer, type(exc).__name__)
        log.debug("C-FIND failure detail", exc_info=True)
        archive.metrics.errors.labels("query").inc()
        yield _failure(UNABLE_TO_PROCESS, "unable to process the query"), None
    finally:
        archive.metrics.query_seconds.observe(time.perf_counter() - started)
