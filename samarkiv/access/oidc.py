"""OpenID Connect bearer tokens: a JWT (RFC 7519) signed by the issuer, checked
against the issuer's JSON Web Key Set (RFC 7517), as OIDC Core 1.0 section 3.1.3.7
prescribes for ID tokens and resource servers do for access tokens.

Checked: the signature (key chosen by ``kid`` from the JWKS, fetched over HTTP
and cached by PyJWT's PyJWKClient; an unknown ``kid`` refetches once), the
algorithm (only ``oidc_algorithms``; never ``none``), ``iss``, ``aud``, ``exp``
and ``nbf`` (with ``oidc_leeway_seconds``). The claims then map to a Principal:
user (``oidc_user_claim``), organisation (``oidc_org_claim``, an organisation
code, else ``oidc_default_org``) and roles (``oidc_roles_claim`` through
``oidc_role_map``). Claim names may be dotted paths (``realm_access.roles``).

A token with the ``patient`` role is a patient's: with ``oidc_patient_id_claim``
set, that claim's national identity number (under ``oidc_patient_id_issuer``)
names their person in the master patient index, the principal's
``patient_key`` (following merges). A number that is invalid, unknown or names
several persons gives no ``patient_key``: the patient then sees nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from typing import Any

import jwt
from jwt import PyJWKClient
from sqlalchemy import Engine

from ..config import AuthSettings
from ..identity.organisations import get_organisation
from ..identity.patients import IdentityError, canonicalise, current_person
from .principal import ROLES, Principal
from .users import patient_person

log = logging.getLogger(__name__)


class OidcError(ValueError):
    """A token was refused; the message says why (never echoes the token)."""


def claim(claims: dict[str, Any], path: str) -> Any:
    """The value at a dotted claim path, or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2


class OidcVerifier:
    """Validates OIDC bearer tokens for one issuer (``[auth]`` settings)."""

    def __init__(self, auth: AuthSettings, engine: Engine) -> None:
        if not auth.oidc_issuer:
            raise ValueError("oidc_issuer is not set")
        if "none" in {a.lower() for a in auth.oidc_algorithms}:
            raise ValueError("oidc_algorithms must not include 'none'")
        self.auth = auth
        self.engine = engine
        self.issuer = auth.oidc_issuer
        self._client: PyJWKClient | None = None
        self._lock = threading.Lock()
        self._roles = dict(auth.oidc_role_map)
        self._orgs: dict[str, tuple[int, str]] = {}

    def _jwks(self) -> PyJWKClient:
        with self._lock:
            if self._client is None:
                url = self.auth.oidc_jwks_url or self._discover()
                self._client = PyJWKClient(url, cache_jwk_set=True, lifespan=self.auth.oidc_jwks_cache_seconds, timeout=10)
            return self._client

    def _discover(self) -> str:
        """The ``jwks_uri`` of the issuer's discovery document (OIDC Discovery 1.0 section 4)."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(json.load(response)["jwks_uri"])
        except (OSError, ValueError, KeyError) as exc:
            raise OidcError(f"cannot read the issuer's discovery document at {url}: {exc}") from None

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims once signature, issuer, audience and times check out."""
        try:
            key = self._jwks().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise OidcError(f"cannot fetch the issuer's keys: {exc}") from None
        except jwt.PyJWKClientError as exc:
            raise OidcError(f"no matching signing key: {exc}") from None
        except jwt.DecodeError as exc:
            raise OidcError(f"malformed token: {exc}") from None
        options = {"require": ["exp", "iss"], "verify_aud": self.auth.oidc_audience is not None}
        try:
            return jwt.decode(
                token, key.key, algorithms=list(self.auth.oidc_algorithms), audience=self.auth.oidc_audience,
                issuer=self.issuer, leeway=self.auth.oidc_leeway_seconds, options=options,  # type: ignore[arg-type]
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise OidcError("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise OidcError("the token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise OidcError("the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise OidcError("the token's signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise OidcError(f"invalid token: {exc}") from None

    def _organisation(self, code: str) -> tuple[int, str] | None:
        """(pk, code) of the organisation; known ones are cached, unknown ones looked up again."""
        if code not in self._orgs:
            with self.engine.connect() as conn:
                org = get_organisation(conn, code)
            if org is None:
                return None
            if len(self._orgs) > 1000:
                self._orgs.clear()
            self._orgs[code] = (org.pk, org.code)
        return self._orgs[code]

    def roles_of(self, claims: dict[str, Any]) -> frozenset[str]:
        raw = claim(claims, self.auth.oidc_roles_claim)
        names = raw.split() if isinstance(raw, str) else list(raw) if isinstance(raw, list) else []
        mapped = {self._roles.get(str(name), str(name)).lower() for name in names}
        return frozenset(mapped & set(ROLES))

    def patient_of(self, claims: dict[str, Any]) -> int | None:
        """The person (now) whose national identity number the token carries, or None."""
        if not self.auth.oidc_patient_id_claim:
            return None
        value = claim(claims, self.auth.oidc_patient_id_claim)
        if not isinstance(value, str) or not value.strip():
            return None
        with self.engine.connect() as conn:
            try:
                canonical = canonicalise(conn, value, self.auth.oidc_patient_id_issuer, None)
                return current_person(conn, patient_person(conn, canonical))
            except IdentityError as exc:
                log.info("OIDC patient %s: no person (%s)", claim(claims, self.auth.oidc_user_claim), exc.__class__.__name__)
                return None

    def principal(self, token: str, address: str | None = None) -> Principal:
        """Verify ``token`` and map its claims; raises OidcError."""
        claims = self.verify(token)
        user = claim(claims, self.auth.oidc_user_claim) or claims.get("sub")
        if not isinstance(user, str) or not user:
            raise OidcError(f"the token has no {self.auth.oidc_user_claim!r} claim")
        org_value = claim(claims, self.auth.oidc_org_claim)
        if isinstance(org_value, list):
            org_value = org_value[0] if len(org_value) == 1 else None
        code = str(org_value).strip("/") if org_value else self.auth.oidc_default_org
        if not code:
            raise OidcError(f"the token names no organisation ({self.auth.oidc_org_claim!r} claim)")
        org = self._organisation(code)
        if org is None:
            raise OidcError(f"the token's organisation {code!r} is not known here")
        roles = self.roles_of(claims)
        patient_key = self.patient_of(claims) if "patient" in roles else None
        return Principal(name=user, kind="user", org_pk=org[0], org_code=org[1], roles=roles,
                         patient_key=patient_key, auth_method="oidc", address=address)  # fmt: skip
