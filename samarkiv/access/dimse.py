"""Who is behind a DIMSE association.

By default the calling AE title binds an association to its organisation as a
service identity (``Archive.owner_for``). DICOM User Identity Negotiation
(PS3.7 D.3.3.7, PS3.8 Annex D) can bind it to a user instead: type 2 (username
and passcode: a local user's password) or type 5 (a JWT from the OIDC issuer,
or a personal API token in its place). Types 1 (username alone: nothing
proven), 3 (Kerberos) and 4 (SAML) are refused.

``[auth] dimse_user_identity``: ``off`` ignores it, ``optional`` checks it when
offered (a wrong one rejects the association), ``required`` also rejects
associations that offer none (checked on the peeked A-ASSOCIATE-RQ, for the
fast path too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pynetdicom import evt

from ..config import UserIdentityMode
from ..core.archive import Archive
from .oidc import OidcError, OidcVerifier
from .principal import Principal
from .tokens import TokenChecker, looks_like_api_token
from .users import PasswordChecker

log = logging.getLogger(__name__)

USERNAME_AND_PASSCODE = 2
JWT = 5
_ATTRIBUTE = "samarkiv_principal"


class DimseIdentity:
    """Verifies user identities offered on associations (blocking)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        auth = archive.settings.auth
        self.mode = auth.dimse_user_identity
        self.passwords = PasswordChecker(archive.engine)
        self.tokens = TokenChecker(archive.engine, archive.catalog.writer)
        self.oidc = OidcVerifier(auth, archive.engine) if auth.oidc_issuer else None

    def verify(self, user_id_type: int, primary: bytes, secondary: bytes | None, address: str | None) -> Principal | None:
        """The user the identity proves, or None (refused)."""
        try:
            first = primary.decode("utf-8")
            second = (secondary or b"").decode("utf-8")
        except UnicodeDecodeError:
            return None
        if user_id_type == USERNAME_AND_PASSCODE:
            principal = self.passwords.authenticate(first, second, "dimse-user-identity", address)
            return principal
        if user_id_type == JWT:
            token = first.strip()
            if looks_like_api_token(token):
                return self.tokens.authenticate(token, address)
            if self.oidc is not None:
                try:
                    return self.oidc.principal(token, address)
                except OidcError as exc:
                    log.warning("DIMSE user identity (JWT) refused: %s", exc)
            return None
        return None

    def handle(self, event: evt.Event) -> tuple[bool, bytes | None]:
        """pynetdicom's EVT_USER_ID handler: (verified, server response)."""
        assoc = event.assoc
        address = getattr(assoc.requestor, "address", None)
        user_id_type = int(event.user_id_type)  # type: ignore[attr-defined]
        principal = self.verify(user_id_type, event.primary_field, event.secondary_field, address)  # type: ignore[attr-defined]
        if principal is None:
            log.warning("association from %s refused: user identity (type %d) not verified",
                        assoc.requestor.ae_title, user_id_type)  # fmt: skip
            return False, None
        setattr(assoc, _ATTRIBUTE, principal)
        return True, None

    def handlers(self) -> list[tuple[evt.EventType, Callable[..., Any]]]:
        if self.mode is UserIdentityMode.OFF:
            return []
        return [(evt.EVT_USER_ID, self.handle)]

    def refuses(self, has_user_identity: bool) -> bool:
        """Whether an association must be rejected before anything else:
        ``required`` and none offered."""
        return self.mode is UserIdentityMode.REQUIRED and not has_user_identity


def association_principal(archive: Archive, assoc: Any) -> Principal | None:
    """The user a negotiated identity bound ``assoc`` to, else the calling AE's
    organisation as a service identity; None when the AE belongs to no organisation."""
    principal = getattr(assoc, _ATTRIBUTE, None)
    if principal is not None:
        return principal
    aet = str(assoc.requestor.ae_title).strip()
    org = archive.owner_for(aet)
    if org is None:
        return None
    return Principal(name=aet, kind="service", org_pk=org.pk, org_code=org.code, roles=frozenset({"service"}),
                     auth_method="aet", address=getattr(assoc.requestor, "address", None))  # fmt: skip
