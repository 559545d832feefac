"""Audit records as DICOM audit messages (PS3.15 Annex A.5, the RFC 3881 derived schema).

One record is one ``AuditMessage``: ``EventIdentification`` (PS3.15 A.5.3:
event ID from CID 400 — Query, DICOM Instances Accessed/Transferred, Export,
DICOM Study Deleted, Patient Record, Security Alert, User Authentication,
Audit Log Used —, EventActionCode, EventDateTime, EventOutcomeIndicator,
PurposeOfUse), the requesting ``ActiveParticipant`` (user or AE title, its
network address), this archive as a second participant, the
``AuditSourceIdentification``, and ``ParticipantObjectIdentification``
entries for the study (110180 Study Instance UID), the patient (Patient
Number, ``ID^^^&ISSUER&ISO`` of the person's identifier) and, for a query,
the query (base64 of its keys).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from .codes import OUTCOME_CODES, event_codes
from .events import PURPOSES

PatientIdOf = Callable[[int], str]


def _code(parent: ET.Element, tag: str, code: str, scheme: str, text: str) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": scheme, "originalText": text})


def _time(moment: datetime) -> str:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def audit_message(
    record: Mapping[str, Any], *, source_id: str, aet: str = "SAMARKIV", patient_id_of: PatientIdOf | None = None
) -> bytes:
    """The PS3.15 A.5 XML of one record (UTF-8, no declaration)."""
    code, meaning, action, subtype = event_codes(record["action"])
    root = ET.Element("AuditMessage")
    event = ET.SubElement(
        root, "EventIdentification",
        {"EventActionCode": action, "EventDateTime": _time(record["time"]),
         "EventOutcomeIndicator": OUTCOME_CODES.get(record["outcome"], "8")},
    )  # fmt: skip
    _code(event, "EventID", code, "DCM", meaning)
    if subtype:
        _code(event, "EventTypeCode", subtype[0], "DCM", subtype[1])
    if record["outcome_detail"]:
        ET.SubElement(event, "EventOutcomeDescription").text = record["outcome_detail"]
    if record["purpose"]:
        _code(event, "PurposeOfUse", record["purpose"], "HL7 v3 PurposeOfUse", PURPOSES.get(record["purpose"], record["purpose"]))

    kind = record["principal_kind"]
    requestor = {
        "UserID": record["user_name"] or source_id,
        "UserIsRequestor": "true",
    }
    if record["org_code"]:
        requestor["AlternativeUserID"] = f"{record['org_code']}"
    if record["user_name"] and kind == "user":
        requestor["UserName"] = record["user_name"]
    if record["address"]:
        requestor.update(NetworkAccessPointID=record["address"], NetworkAccessPointTypeCode="2")
    who = ET.SubElement(root, "ActiveParticipant", requestor)
    if action in ("C",) or record["action"] == "store":
        _code(who, "RoleIDCode", "110153", "DCM", "Source Role ID")
    elif record["action"] in ("retrieve", "download", "export", "view"):
        _code(who, "RoleIDCode", "110152", "DCM", "Destination Role ID")
    us = ET.SubElement(root, "ActiveParticipant", {"UserID": aet, "AlternativeUserID": source_id, "UserIsRequestor": "false"})
    _code(us, "RoleIDCode", "110150", "DCM", "Application")

    src = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    _code(src, "AuditSourceTypeCode", "4", "DCM", "Application Server Process")

    uid = record["study_uid"]
    if uid:
        obj = ET.SubElement(
            root, "ParticipantObjectIdentification",
            {"ParticipantObjectID": uid, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3"},
        )  # fmt: skip
        _code(obj, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
        if record["object_count"]:
            desc = ET.SubElement(obj, "ParticipantObjectDescription")
            desc.text = f"{record['object_count']} instance(s)"
    if record["action"] == "query" and record["detail"]:
        obj = ET.SubElement(
            root, "ParticipantObjectIdentification",
            {"ParticipantObjectID": "1.2.840.10008.5.1.4.1.2.2.1", "ParticipantObjectTypeCode": "2",
             "ParticipantObjectTypeCodeRole": "3"},
        )  # fmt: skip
        _code(obj, "ParticipantObjectIDTypeCode", "110181", "DCM", "SOP Class UID")
        ET.SubElement(obj, "ParticipantObjectQuery").text = base64.b64encode(record["detail"].encode()).decode()
    for key in (k for k in (record["patient_keys"] or "").split(",") if k):
        pid = patient_id_of(int(key)) if patient_id_of else ""
        obj = ET.SubElement(
            root, "ParticipantObjectIdentification",
            {"ParticipantObjectID": pid or f"person-{key}", "ParticipantObjectTypeCode": "1",
             "ParticipantObjectTypeCodeRole": "1"},
        )  # fmt: skip
        _code(obj, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
        if record["action"] in ("link", "merge", "unlink", "unmerge", "delete"):
            obj.set("ParticipantObjectDataLifeCycle", "3" if record["action"] == "delete" else "2")
    if record["reason"]:
        obj = ET.SubElement(
            root, "ParticipantObjectIdentification",
            {"ParticipantObjectID": str(record["seq"]), "ParticipantObjectTypeCode": "4",
             "ParticipantObjectTypeCodeRole": "13"},
        )  # fmt: skip
        _code(obj, "ParticipantObjectIDTypeCode", "110101", "DCM", "Audit Log")
        ET.SubElement(obj, "ParticipantObjectDetail", {"type": "reason", "value": base64.b64encode(record["reason"].encode()).decode()})
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)
