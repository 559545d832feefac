"""Index in place: register a file where it lies, without copying it.

Its blob key is ``file:`` + the absolute path (``Archive.open_blob`` opens it,
``Archive._discard`` never deletes it, the orphan sweep lists only the blob
store). The checksum is taken now, so ``samarkiv verify`` notices a file
that changed or went away.
"""

from __future__ import annotations

from pathlib import Path

from ..core.archive import IN_PLACE_PREFIX, Archive, RejectReason, StoreOutcome, StoreResult, _not_authorised, _patient_conflict
from ..core.ingest import RejectedDataset, parse_instance
from ..identity.patients import IdentityError
from ..index.catalog import InstanceExists, PatientConflict
from ..storage.blobstore import sha256_of

MAX_KEY = 255  # instances.blob_key


def store_in_place(archive: Archive, path: Path, source_aet: str | None = None) -> StoreResult:
    """Index ``path`` where it is; the same outcomes as a store (a second time: DUPLICATE)."""
    path = path.resolve()
    key = f"{IN_PLACE_PREFIX}{path}"
    if len(key) > MAX_KEY:
        return StoreResult(StoreOutcome.REJECTED, None, RejectReason.INVALID, f"path longer than {MAX_KEY - 5} characters")
    owner = archive.owner_for(source_aet)
    if owner is None:
        return _not_authorised(None)
    try:
        parsed = parse_instance(path)
        with open(path, "rb") as f:
            size, digest = sha256_of(f)
    except RejectedDataset as exc:
        return StoreResult(StoreOutcome.REJECTED, None, RejectReason.INVALID, str(exc))
    except OSError as exc:
        return StoreResult(StoreOutcome.REJECTED, None, RejectReason.INVALID, f"cannot read: {exc}")
    uid = parsed.sop_instance_uid
    existing = archive.catalog.instance(uid)
    if existing is None:
        try:
            archive._commit(parsed, key, size, digest, source_aet, owner, None)  # noqa: SLF001
            return StoreResult(StoreOutcome.STORED, uid, size=size)
        except PatientConflict:
            return _patient_conflict(uid)
        except IdentityError as exc:
            return StoreResult(StoreOutcome.REJECTED, uid, RejectReason.INVALID, str(exc))
        except InstanceExists:
            existing = archive.catalog.instance(uid)
    if existing is not None and existing.sha256 == digest:
        return StoreResult(StoreOutcome.DUPLICATE, uid, size=size)
    return StoreResult(
        StoreOutcome.REJECTED, uid, RejectReason.DUPLICATE_CONFLICT, "a different object with this SOP Instance UID is already stored"
    )
