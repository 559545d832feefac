"""Codes shared by the FHIR AuditEvent and DICOM audit message exports.

Audit event IDs are DICOM's (PS3.16 CID 400 "Audit Event ID", scheme DCM),
which FHIR R4 AuditEvent.type also accepts; actions are the RFC 3881 / FHIR
AuditEventAction codes C, R, U, D, E.
"""

from __future__ import annotations

DCM = "http://dicom.nema.org/resources/ontology/DCM"

# action -> (event ID code, meaning, event action code, event type code or None)
EVENTS: dict[str, tuple[str, str, str, tuple[str, str] | None]] = {
    "query": ("110112", "Query", "E", None),
    "retrieve": ("110104", "DICOM Instances Transferred", "R", None),
    "view": ("110103", "DICOM Instances Accessed", "R", None),
    "download": ("110104", "DICOM Instances Transferred", "R", None),
    "export": ("110106", "Export", "R", None),
    "store": ("110104", "DICOM Instances Transferred", "C", None),
    "delete": ("110105", "DICOM Study Deleted", "D", None),
    "share": ("110110", "Patient Record", "U", None),
    "break-glass": ("110113", "Security Alert", "E", ("110127", "Emergency Override Started")),
    "link": ("110110", "Patient Record", "U", None),
    "merge": ("110110", "Patient Record", "U", None),
    "unlink": ("110110", "Patient Record", "U", None),
    "unmerge": ("110110", "Patient Record", "U", None),
    "login": ("110114", "User Authentication", "E", ("110122", "Login")),
    "logout": ("110114", "User Authentication", "E", ("110123", "Logout")),
    "review": ("110101", "Audit Log Used", "R", None),
    "audit-read": ("110101", "Audit Log Used", "R", None),
    "fixity": ("110113", "Security Alert", "E", None),  # a stored object found corrupt, missing or repaired
}

# outcome -> RFC 3881 EventOutcomeIndicator / FHIR AuditEventOutcome
OUTCOME_CODES = {"allowed": "0", "denied": "4", "error": "8"}


def event_codes(action: str) -> tuple[str, str, str, tuple[str, str] | None]:
    return EVENTS.get(action, ("110100", "Application Activity", "E", None))
