"""Presentation contexts samarkiv accepts (PS3.7 section D.3.3.2, PS3.4 Annex B)."""

from __future__ import annotations

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification

# Every transfer syntax pydicom knows: as received, never re-encoded.
TRANSFER_SYNTAXES: list[str] = list(AllTransferSyntaxes)

STORAGE_SOP_CLASSES: list[str] = [cx.abstract_syntax for cx in AllStoragePresentationContexts]  # type: ignore[misc]
VERIFICATION = Verification
