"""Mapping on the way in: the source's issuer of Patient ID and attribute coercion.

Rules are ``Keyword=Value`` (always set) or ``Keyword:Old=New`` (replace only
that value, e.g. a known bad Institution Name). Objects that need no change
are stored byte for byte; changed ones are rewritten in their own transfer
syntax. The issuer (PS3.3 C.7.1.1, Issuer of Patient ID) is set where the
source left it empty.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword

from ..core.structure import inspect_buffer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    keyword: str
    value: str
    only_if: str | None = None

    @classmethod
    def parse(cls, text: str) -> Rule:
        target, eq, value = text.partition("=")
        keyword, colon, old = target.partition(":")
        keyword = keyword.strip()
        if not eq or tag_for_keyword(keyword) is None:
            raise ValueError(f"bad coercion rule {text!r} (Keyword=Value or Keyword:Old=New, with a DICOM keyword)")
        if dictionary_VR(keyword) in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            raise ValueError(f"{keyword}: only text attributes can be coerced")
        return cls(keyword, value, old if colon else None)


@dataclass(frozen=True)
class Mapping:
    issuer_of_patient_id: str | None = None
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    @property
    def active(self) -> bool:
        return bool(self.issuer_of_patient_id or self.rules)

    def apply(self, data: bytes) -> bytes:
        """The object with the mapping applied (the same bytes when nothing changes, or when they
        do not parse: the archive then refuses the object and says why)."""
        if not self.active:
            return data
        try:
            ds = dcmread(BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on garbage
            log.debug("mapping skipped an object that does not parse: %s", exc)
            return data
        changed = False
        if self.issuer_of_patient_id and not ds.get("IssuerOfPatientID"):
            ds.IssuerOfPatientID = self.issuer_of_patient_id
            changed = True
        for rule in self.rules:
            current = ds.get(rule.keyword)
            if rule.only_if is not None and str(current if current is not None else "") != rule.only_if:
                continue
            if str(current) != rule.value:
                setattr(ds, rule.keyword, rule.value)
                changed = True
        if not changed:
            return data
        out = BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()


def mapping_of(options: dict[str, Any]) -> Mapping:
    """A migration job's mapping, from its options (``issuer_of_patient_id``, ``coerce``)."""
    return Mapping(options.get("issuer_of_patient_id"), tuple(Rule.parse(r) for r in options.get("coerce", [])))


def dataset_sha256(data: bytes) -> str:
    """SHA-256 of a Part 10 object's data set, File Meta left out: what verification compares
    with the source (verify.py), which may send the same data set behind another header."""
    return hashlib.sha256(data[inspect_buffer(data).dataset_offset :]).hexdigest()
