"""The authenticated party behind a request or an association."""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = (
    "radiologist",
    "clinician",
    "technologist",
    "administrator",
    "auditor",
    "researcher",
    "patient",
    "service",
)


@dataclass(frozen=True)
class Principal:
    """Who acts: a user (local or OIDC), a DICOM service identity (a calling AE
    title bound to its organisation), or the archive itself (``system``).

    ``org_pk``/``org_code`` name the organisation the principal acts for;
    ``patient_key`` is set for a patient acting on their own record.
    """

    name: str
    kind: str  # "user", "service" (DIMSE calling AE), "system", "share-link"
    org_pk: int | None = None
    org_code: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    user_pk: int | None = None
    patient_key: int | None = None
    auth_method: str = ""  # "password", "token", "session", "oidc", "aet", "dimse-user-identity"
    address: str | None = None  # network peer, for the audit trail

    def has_role(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))


SYSTEM = Principal(name="samarkiv", kind="system", roles=frozenset({"administrator"}), auth_method="internal")
