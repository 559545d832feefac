"""Presentation contexts samarkiv accepts (PS3.7 section D.3.3.2, PS3.4 Annex B)."""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

# Every transfer syntax pydicom knows: as received, never re-encoded. pynetdicom
# accepts the first of these that a context proposes, so Explicit VR Little
# Endian leads: it keeps VRs on the way in, and most stored objects are in it
# on the way out (C-GET, C-MOVE), where they then need no re-encoding.
TRANSFER_SYNTAXES: list[str] = [ExplicitVRLittleEndian] + [
    ts for ts in AllTransferSyntaxes if ts != ExplicitVRLittleEndian
]


def _storage_sop_classes() -> list[str]:
    """Every storage SOP class, current and retired (PS3.6 Table A-1): old
    modalities and legacy archives still send retired ones."""
    known = {cx.abstract_syntax for cx in AllStoragePresentationContexts}
    for uid, (name, kind, *_rest) in UID_dictionary.items():
        if kind == "SOP Class" and "Storage" in name and not any(
            word in name for word in ("Commitment", "Storage Media", "Media Storage Directory")
        ):
            known.add(uid)
    return sorted(known)  # type: ignore[arg-type]


STORAGE_SOP_CLASSES: list[str] = _storage_sop_classes()
VERIFICATION = Verification
