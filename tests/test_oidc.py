"""OpenID Connect bearer tokens against a real issuer-like server: a test RSA key
published as a JWKS (RFC 7517) with a discovery document, over HTTP on
127.0.0.1; tokens signed with it are accepted and mapped to user, organisation
and roles, and expired, wrong-audience, wrong-issuer, wrong-signature, unsigned
and missing ones are refused — over HTTP and over DIMSE user identity (JWT)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import ArchiveProcess, require_tool, storescu
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

AUDIENCE = "samarkiv"


@dataclass
class Issuer:
    url: str
    key: rsa.RSAPrivateKey
    kid: str = "test-key-1"
    fetches: int = 0

    def token(self, *, key: rsa.RSAPrivateKey | None = None, lifetime: int = 300, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.url, "aud": AUDIENCE, "iat": now, "exp": now + lifetime, "sub": "f81d4fae",
            "preferred_username": "dr.ek", "org": "KS", "realm_access": {"roles": ["imaging-doctor", "offline_access"]},
        }  # fmt: skip
        body.update(claims)
        return jwt.encode(body, key or self.key, algorithm="RS256", headers={"kid": self.kid})


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    """A minimal OIDC issuer: discovery document and JWKS over HTTP on 127.0.0.1."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    state: dict[str, Issuer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            current = state["issuer"]
            if self.path == "/realms/test/.well-known/openid-configuration":
                body = {"issuer": current.url, "jwks_uri": current.url + "/protocol/openid-connect/certs"}
            elif self.path == "/realms/test/protocol/openid-connect/certs":
                current.fetches += 1
                jwk = json.loads(RSAAlgorithm.to_jwk(current.key.public_key()))
                body = {"keys": [{**jwk, "kid": current.kid, "use": "sig", "alg": "RS256"}]}
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["issuer"] = Issuer(f"http://127.0.0.1:{server.server_port}/realms/test", key)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state["issuer"]
    server.shutdown()
    server.server_close()


def _config(issuer: Issuer, extra: str = "") -> str:
    return (
        f'[auth]\noidc_issuer = "{issuer.url}"\noidc_audience = "{AUDIENCE}"\noidc_org_claim = "org"\n'
        f'oidc_roles_claim = "realm_access.roles"\n{extra}\n[auth.oidc_role_map]\n"imaging-doctor" = "radiologist"\n'
    )


@pytest.fixture
def oidc_archive(make_archive, issuer: Issuer) -> ArchiveProcess:  # type: ignore[no-untyped-def]
    server = make_archive(_config(issuer))
    server.cli("org", "add", "KS", "--name", "Karolinska")
    return server


def _me(server: ArchiveProcess, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{server.http}/api/me", headers=headers, timeout=30)


def test_valid_token_is_mapped_to_user_organisation_and_roles(oidc_archive: ArchiveProcess, issuer: Issuer) -> None:
    token = issuer.token()
    me = _me(oidc_archive, token)
    assert me.status_code == 200, me.text
    assert me.json() == {"name": "dr.ek", "kind": "user", "organisation": "KS", "roles": ["radiologist"], "auth_method": "oidc"}
    # the same token opens the APIs; the JWKS was fetched once (cached)
    assert httpx.get(f"{oidc_archive.http}/dicomweb/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.get(f"{oidc_archive.http}/fhir/Patient", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert _me(oidc_archive, issuer.token(preferred_username="dr.berg")).json()["name"] == "dr.berg"
    assert issuer.fetches == 1
    # roles that are samarkiv's own pass unmapped; unknown ones are dropped
    assert _me(oidc_archive, issuer.token(realm_access={"roles": ["auditor", "admin"]})).json()["roles"] == ["auditor"]
    # local tokens keep working beside OIDC
    assert httpx.get(f"{oidc_archive.http}/api/me", headers=oidc_archive.headers).json()["auth_method"] == "token"


def test_bad_tokens_are_refused(oidc_archive: ArchiveProcess, issuer: Issuer) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = {
        "expired": issuer.token(lifetime=-3600),
        "another audience": issuer.token(aud="someone-else"),
        "another issuer": issuer.token(iss="http://127.0.0.1:1/realms/evil"),
        "signature": issuer.token(key=other_key),
        "unknown organisation": issuer.token(org="NOWHERE"),
        "no user": issuer.token(preferred_username=None, sub=None),
        "unsigned": jwt.encode({"iss": issuer.url, "aud": AUDIENCE, "exp": int(time.time()) + 300,
                                "preferred_username": "x", "org": "KS"}, None, algorithm="none"),
        "garbage": "a.b.c",
    }
    for why, token in refused.items():
        response = _me(oidc_archive, token)
        assert response.status_code == 401, why
        assert 'error="invalid_token"' in response.headers["www-authenticate"], why
        assert response.json()["status"] == 401
    reasons = {why: _me(oidc_archive, token).json()["detail"] for why, token in refused.items()}
    assert "expired" in reasons["expired"]
    assert "audience" in reasons["another audience"]
    assert "issuer" in reasons["another issuer"]
    assert "signature" in reasons["signature"]
    assert "NOWHERE" in reasons["unknown organisation"]
    missing = _me(oidc_archive, None)
    assert missing.status_code == 401 and "invalid_token" not in missing.headers["www-authenticate"]


def test_default_organisation_and_configured_jwks_url(make_archive, issuer: Issuer) -> None:  # type: ignore[no-untyped-def]
    extra = f'oidc_jwks_url = "{issuer.url}/protocol/openid-connect/certs"\noidc_default_org = "default"'
    server = make_archive(_config(issuer, extra))
    me = _me(server, issuer.token(org=None))
    assert me.status_code == 200, me.text
    assert me.json()["organisation"] == "default"


def test_dimse_user_identity_with_a_jwt(oidc_archive: ArchiveProcess, issuer: Issuer, sendable_files: list[Path], tmp_path: Path) -> None:
    require_tool("storescu")
    good, bad = tmp_path / "good.jwt", tmp_path / "expired.jwt"
    good.write_text(issuer.token())
    bad.write_text(issuer.token(lifetime=-3600))
    refused = storescu(oidc_archive, sendable_files[0], extra=("--user", "x", "--jwt", str(bad)))
    assert "Association Rejected" in refused.stdout + refused.stderr
    accepted = storescu(oidc_archive, sendable_files[0], extra=("--user", "x", "--jwt", str(good)))
    assert accepted.returncode == 0 and "E:" not in accepted.stderr, accepted.stderr
