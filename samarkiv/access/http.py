"""The HTTP authentication layer: one ASGI middleware in front of every route
except ``/healthz`` and the login page.

Accepted credentials (first that is present wins):

- ``Authorization: Bearer <token>`` (RFC 6750): a personal API token
  (``smk_...``) or, with ``[auth] oidc_issuer`` set, an OIDC JWT (samarkiv/access/oidc.py);
- ``Authorization: Basic`` (RFC 7617): a local user's name and password;
- the login page's session cookie (``samarkiv_session``);
- a share link's token (``smkl_...``, samarkiv/access/policy.py
  ``link_principal``) as a bearer token, or, on ``GET`` of the DICOMweb,
  WADO-URI and viewer paths only (a viewer opening a link cannot always set
  headers), as ``?token=``: the principal sees exactly the link's studies
  with its rights; a revoked or expired link is 401. A viewer page opened
  with ``?token=`` also gets the token as an HttpOnly same-site cookie
  (``samarkiv_link``), so the viewer's own DICOMweb requests carry it.

The Principal lands on ``request.state.principal`` (``current_principal`` is the
FastAPI dependency). Without valid credentials: 401 with ``WWW-Authenticate``
challenges and a problem document (RFC 9457; an OperationOutcome under /fhir),
or, for a browser asking for a page, a redirect to ``/login``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qsl, quote

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from ..audit import AuditEvent
from ..core.archive import Archive
from ..identity.organisations import Organisation, organisation_by_pk
from .oidc import OidcError, OidcVerifier, looks_like_jwt
from .policy import link_principal, looks_like_link_token
from .principal import Principal
from .tokens import TokenChecker, looks_like_api_token
from .users import PasswordChecker

log = logging.getLogger(__name__)

SESSION_COOKIE = "samarkiv_session"
LINK_COOKIE = "samarkiv_link"  # a share link's token, set when a viewer page is opened with ?token=
OPEN_PATHS = frozenset({"/healthz", "/login", "/logout", "/favicon.ico"})
REALM = 'realm="samarkiv"'
# Where a share-link token may come as ``?token=`` (GET only), besides the DICOMweb root.
LINK_PATHS = ("/wado", "/viewer")


class AuthFailed(Exception):
    """Credentials were presented and refused (RFC 6750 3.1 ``invalid_token``)."""


class Authenticator:
    """Turns request credentials into a Principal (blocking: call in a thread)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.auth = archive.settings.auth
        self.passwords = PasswordChecker(archive.engine)
        self.tokens = TokenChecker(archive.engine, archive.catalog.writer)
        self.oidc = OidcVerifier(self.auth, archive.engine) if self.auth.oidc_issuer else None
        self._orgs: dict[int, tuple[float, Organisation | None]] = {}

    def bearer(self, token: str, address: str | None) -> Principal:
        token = token.strip()
        if looks_like_link_token(token):
            return self.share_link(token, address)
        if looks_like_api_token(token):
            principal = self.tokens.authenticate(token, address)
            if principal is None:
                raise AuthFailed("the token is unknown, expired or revoked")
            return principal
        if self.oidc is not None and looks_like_jwt(token):
            try:
                return self.oidc.principal(token, address)
            except OidcError as exc:
                raise AuthFailed(str(exc)) from None
        raise AuthFailed("the bearer token is not one this archive issues or accepts")

    def share_link(self, token: str, address: str | None) -> Principal:
        """The principal of an active share link (policy.link_principal)."""
        with self.archive.engine.connect() as conn:
            principal = link_principal(conn, token, address=address)
        if principal is None:
            # audited: a refused link is an attempted access to patient data
            who = Principal(name="share-link", kind="share-link", auth_method="share-link", address=address)
            self.archive.gate.audit(AuditEvent("login", who, outcome="denied",
                                               outcome_detail="share link unknown, expired or revoked"))  # fmt: skip
            raise AuthFailed("the share link is unknown, expired or revoked")
        return principal

    def basic(self, credentials: str, address: str | None) -> Principal:
        if not self.auth.basic_auth:
            raise AuthFailed("Basic authentication is turned off ([auth] basic_auth)")
        try:
            username, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthFailed("malformed Basic credentials") from None
        principal = self.passwords.authenticate(username, password, "password", address)
        if principal is None:
            raise AuthFailed("wrong user name or password, or the user is disabled")
        return principal

    def password(self, username: str, password: str, address: str | None) -> Principal | None:
        return self.passwords.authenticate(username, password, "password", address)

    def from_request(
        self, headers: Headers, cookies: dict[str, str], address: str | None, link_token: str | None = None
    ) -> Principal | None:
        """The principal, None when no credentials came; raises AuthFailed.
        ``link_token``: a ``?token=`` share-link token (see the module docstring)."""
        if link_token is not None and "authorization" not in headers:
            return self.share_link(link_token, address)
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                return self.bearer(value, address)
            if scheme.lower() == "basic":
                return self.basic(value, address)
            raise AuthFailed(f"unsupported authorization scheme {scheme!r}: use Bearer or Basic")
        session = cookies.get(SESSION_COOKIE)
        if session:
            principal = self.tokens.session(session, address)
            if principal is None:
                raise AuthFailed("the session has expired; log in again")
            return principal
        link = cookies.get(LINK_COOKIE)
        if link and looks_like_link_token(link):
            return self.share_link(link, address)
        return None

    def organisation(self, principal: Principal) -> Organisation | None:
        """The principal's organisation (cached for a few seconds)."""
        if principal.org_pk is None:
            return None
        now = time.monotonic()
        cached = self._orgs.get(principal.org_pk)
        if cached is not None and now - cached[0] < 10:
            return cached[1]
        with self.archive.engine.connect() as conn:
            org = organisation_by_pk(conn, principal.org_pk)
        self._orgs[principal.org_pk] = (now, org)
        return org


def _cookies(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in headers.getlist("cookie"):
        for item in header.split(";"):
            name, sep, value = item.strip().partition("=")
            if sep:
                out.setdefault(name, value)
    return out


def _link_token(scope: Scope, paths: tuple[str, ...]) -> str | None:
    """A share-link token given as ``?token=`` on a GET where links may be opened."""
    if scope["method"] not in ("GET", "HEAD") or not scope.get("query_string"):
        return None
    if not scope["path"].startswith(paths):
        return None
    for name, value in parse_qsl(scope["query_string"].decode("latin-1")):
        if name == "token" and looks_like_link_token(value):
            return value
    return None


def _wants_page(scope: Scope, headers: Headers) -> bool:
    return scope["method"] in ("GET", "HEAD") and "text/html" in headers.get("accept", "") and "authorization" not in headers


def _challenge(path: str, detail: str, error: bool) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    safe = detail.replace('"', "'").replace("\\", "/")
    bearer = f"Bearer {REALM}" + (f', error="invalid_token", error_description="{safe}"' if error else "")
    challenges = [(b"www-authenticate", bearer.encode("latin-1", "replace")),
                  (b"www-authenticate", f'Basic {REALM}, charset="UTF-8"'.encode())]  # fmt: skip
    if path == "/fhir" or path.startswith("/fhir/"):
        body = {"resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "login", "diagnostics": detail}]}  # fmt: skip
        media = b"application/fhir+json"
    else:
        body = {"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": detail}
        media = b"application/problem+json"
    return 401, [(b"content-type", media), *challenges], json.dumps(body).encode()


class AuthenticationMiddleware:
    """Pure ASGI middleware (streaming bodies pass untouched)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator
        root = "/" + authenticator.archive.settings.dicomweb_root.strip("/")
        self.link_paths = (root + "/", *LINK_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        client = scope.get("client")
        address = client[0] if client else None
        detail, error = "authentication required: a bearer token, Basic credentials or a login session", False
        try:
            principal = await run_in_threadpool(
                self.authenticator.from_request, headers, _cookies(headers), address, _link_token(scope, self.link_paths)
            )
        except AuthFailed as exc:
            principal, detail, error = None, str(exc), True
        if principal is not None:
            scope.setdefault("state", {})["principal"] = principal
            link = _link_token(scope, self.link_paths)
            if link is not None and path.startswith("/viewer") and principal.kind == "share-link":
                send = _with_cookie(send, link)
            await self.app(scope, receive, send)
            return
        if _wants_page(scope, headers):
            target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
            location = "/login?next=" + quote(target, safe="")
            await _send(send, 303, [(b"location", location.encode()), (b"content-length", b"0")], b"")
            return
        status, response_headers, body = _challenge(path, detail, error)
        await _send(send, status, [*response_headers, (b"content-length", str(len(body)).encode())], body)


def _with_cookie(send: Send, token: str) -> Send:
    """``send`` adding the share-link cookie to the response head."""
    cookie = f"{LINK_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")

    async def sending(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie)]}
        await send(message)

    return sending


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def current_principal(request: Request) -> Principal:
    """FastAPI dependency: the authenticated caller (the middleware set it)."""
    principal = request.scope.get("state", {}).get("principal")
    if principal is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": f"Bearer {REALM}"})
    return principal


def principal_of(request: Request) -> Principal | None:
    return request.scope.get("state", {}).get("principal")


def authenticator_of(request: Request) -> Authenticator | None:
    return request.app.state.authenticator if hasattr(request.app.state, "authenticator") else None


def organisation_of(request: Request) -> Organisation | None:
    """The organisation the caller acts for (None when not authenticated)."""
    principal = principal_of(request)
    authenticator = authenticator_of(request)
    if principal is None or authenticator is None:
        return None
    return authenticator.organisation(principal)
