"""The prepared WADO-RS metadata of each instance (web/dicomweb/metadata.py).

One row per instance: its DICOM JSON object (PS3.18 F.2), zlib-compressed
UTF-8, made from the object whose SHA-256 is ``sha256``. A row whose digest
differs from the instance's (the object was replaced) is stale and is never
served; it is overwritten when the new one is prepared. BulkDataURIs are kept
as paths (``/studies/.../bulk/{tag}``) and prefixed with the request's
DICOMweb root when served.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Integer, LargeBinary, String, Table

from .schema import metadata

instance_json = Table(
    "instance_json",
    metadata,
    Column("instance_pk", Integer, ForeignKey("instances.pk", ondelete="CASCADE"), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("data", LargeBinary, nullable=False),
)
