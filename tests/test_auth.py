"""Authentication: local users, passwords, API tokens, sessions, the first
administrator, every HTTP door closed without credentials, and DICOM User
Identity Negotiation (PS3.7 D.3.3.7) with DCMTK's storescu."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import ArchiveProcess, require_tool, run_cli, storescu

# One route of each HTTP family (DICOMweb, WADO-URI, FHIR, admin, landing, metrics, viewer, API docs).
PROTECTED = [
    "/dicomweb/studies", "/dicomweb/studies/1.2.3/metadata", "/wado?requestType=WADO&studyUID=1&seriesUID=2&objectUID=3",
    "/fhir/Patient", "/fhir/metadata", "/admin/capacity", "/", "/metrics", "/viewer/app-config.js", "/docs",
    "/openapi.json", "/api/me",
]  # fmt: skip
PASSWORD = "correct horse battery"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _add_user(archive: ArchiveProcess, name: str, *roles: str, org: str = "default") -> subprocess.CompletedProcess[str]:
    role_args = [arg for role in roles for arg in ("--role", role)]
    return subprocess.run(
        [sys.executable, "-m", "samarkiv", "users", "add", name, "--org", org, *role_args, "--password-stdin",
         "--data", str(archive.data), "--index-url", archive.index_url],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _token(archive: ArchiveProcess, user: str, *args: str) -> str:
    return archive.cli("tokens", "create", user, *args).stdout.strip()


def test_every_door_is_closed_without_credentials_and_healthz_is_open(archive) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{archive.http}/healthz").status_code == 200
    assert httpx.get(f"{archive.http}/login").status_code == 200
    for path in PROTECTED:
        response = httpx.get(archive.http + path, headers={"Accept": "application/json"})
        assert response.status_code == 401, path
        challenges = response.headers.get_list("www-authenticate")
        assert any(c.startswith("Bearer") for c in challenges) and any(c.startswith("Basic") for c in challenges), path
        if path.startswith("/fhir"):
            assert response.json()["resourceType"] == "OperationOutcome"
        else:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["status"] == 401
    for method, path in (("POST", "/dicomweb/studies"), ("POST", "/fhir/ImagingStudy/_search")):
        assert httpx.request(method, archive.http + path, content=b"x").status_code == 401, path
    # a browser asking for a page is sent to the login page, and back afterwards
    page = httpx.get(f"{archive.http}/viewer/?x=1", headers={"Accept": "text/html,*/*"})
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fviewer%2F%3Fx%3D1"
    # the test fixtures' own credentials open them
    for path in PROTECTED[:3]:  # past authentication: an unknown study is refused by the policy (403)
        assert httpx.get(archive.http + path, headers=archive.headers).status_code in (200, 403, 404), path


def test_passwords_tokens_expiry_revocation_and_disabling(archive, index_url: str) -> None:  # type: ignore[no-untyped-def]
    added = _add_user(archive, "rita", "radiologist", "clinician")
    assert added.returncode == 0, added.stderr
    url = f"{archive.http}/api/me"

    me = httpx.get(url, headers=_basic("rita", PASSWORD))
    assert me.status_code == 200, me.text
    assert me.json() == {"name": "rita", "kind": "user", "organisation": "default",
                         "roles": ["clinician", "radiologist"], "auth_method": "password"}  # fmt: skip
    assert httpx.get(url, headers=_basic("rita", PASSWORD)).status_code == 200  # the cached check
    wrong = httpx.get(url, headers=_basic("rita", "not the password"))
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert httpx.get(url, headers=_basic("nobody", PASSWORD)).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Basic !!!"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Digest x"}).status_code == 401

    token = _token(archive, "rita", "--name", "script", "--expires", "30")
    assert token.startswith("smk_")
    assert httpx.get(url, headers=_bearer(token)).json()["auth_method"] == "token"
    assert httpx.get(url, headers=_bearer(token + "x")).status_code == 401
    assert httpx.get(url, headers=_bearer("not-a-token")).status_code == 401

    # only the token's SHA-256 is kept
    engine = sa.create_engine(index_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            rows = conn.execute(sa.text("SELECT pk, token_sha256 FROM api_tokens")).all()
            assert hashlib.sha256(token.encode()).hexdigest() in {r.token_sha256 for r in rows}
            assert all(token not in str(tuple(r)) for r in rows)
            hashes = conn.execute(sa.text("SELECT password_hash FROM users WHERE username = 'rita'")).scalar_one()
            assert hashes.startswith("$argon2id$") and PASSWORD not in hashes
            # an expired token is refused
            expiring = _token(archive, "rita", "--name", "short", "--expires", "1")
            assert httpx.get(url, headers=_bearer(expiring)).status_code == 200
            conn.execute(
                sa.text("UPDATE api_tokens SET expires_at = :t WHERE name = 'short'"),
                {"t": datetime.now(UTC) - timedelta(minutes=1)},
            )
        expired = httpx.get(url, headers=_bearer(expiring))
        assert expired.status_code == 401 and "expired" in expired.headers["www-authenticate"]
    finally:
        engine.dispose()

    listed = archive.cli("tokens", "list", "rita", "--json").stdout
    states = {t["name"]: t["state"] for t in __import__("json").loads(listed)}
    assert states == {"script": "active", "short": "expired"}
    token_id = next(t["id"] for t in __import__("json").loads(listed) if t["name"] == "script")
    archive.cli("tokens", "revoke", str(token_id))
    assert httpx.get(url, headers=_bearer(token)).status_code == 401

    # a disabled user's password and tokens stop working at once; enabling restores them
    other = _token(archive, "rita")
    archive.cli("users", "disable", "rita")
    assert httpx.get(url, headers=_bearer(other)).status_code == 401
    assert httpx.get(url, headers=_basic("rita", PASSWORD)).status_code == 401
    archive.cli("users", "disable", "rita", "--enable")
    assert httpx.get(url, headers=_bearer(other)).status_code == 200
    # a new password replaces the old one (and the cached check of it)
    result = subprocess.run(
        [sys.executable, "-m", "samarkiv", "users", "passwd", "rita", "--password-stdin",
         "--data", str(archive.data), "--index-url", archive.index_url],
        input="a brand new password\n", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert httpx.get(url, headers=_basic("rita", PASSWORD)).status_code == 401
    assert httpx.get(url, headers=_basic("rita", "a brand new password")).status_code == 200


def test_login_page_session_cookie_and_logout(archive) -> None:  # type: ignore[no-untyped-def]
    assert _add_user(archive, "vera", "radiologist").returncode == 0
    with httpx.Client(base_url=archive.http) as client:
        form = client.get("/login", params={"next": "/viewer/"})
        assert form.status_code == 200 and 'name="next" value="/viewer/"' in form.text
        bad = client.post("/login", data={"username": "vera", "password": "wrong", "next": "/viewer/"})
        assert bad.status_code == 401 and "Wrong user name or password" in bad.text
        assert "samarkiv_session" not in client.cookies
        good = client.post("/login", data={"username": "vera", "password": PASSWORD, "next": "/viewer/"})
        assert good.status_code == 303 and good.headers["location"] == "/viewer/"
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http here; https sets it
        me = client.get("/api/me")
        assert me.status_code == 200 and me.json()["auth_method"] == "session" and me.json()["name"] == "vera"
        assert client.get("/dicomweb/studies").status_code == 200
        # never redirected off-site
        offsite = client.post("/login", data={"username": "vera", "password": PASSWORD, "next": "//evil.example/"})
        assert offsite.headers["location"] == "/"
        session = client.cookies["samarkiv_session"]
        assert client.get("/logout").status_code == 303
    # the ended session is refused even when presented again
    stale = httpx.get(f"{archive.http}/api/me", cookies={"samarkiv_session": session})
    assert stale.status_code == 401


def test_first_start_admin_printed_once_never_logged(make_archive) -> None:  # type: ignore[no-untyped-def]
    server = make_archive()
    output = server.log.read_text()
    banners = re.findall(r"Created user 'admin' \(administrator\) with password:\s+(\S+)", output)
    assert len(banners) == 1, output
    password = banners[0]
    # the one line holding it is the console banner, not a log record
    holding = [line for line in output.splitlines() if password in line]
    assert holding == [f"      {password}"]
    me = httpx.get(f"{server.http}/api/me", headers=_basic("admin", password))
    assert me.json() == {"name": "admin", "kind": "user", "organisation": "default",
                         "roles": ["administrator"], "auth_method": "password"}  # fmt: skip
    assert server.stop() == 0
    server.start()
    assert server.log.read_text().count("Created user 'admin'") == 1  # only the first start
    assert httpx.get(f"{server.http}/api/me", headers=_basic("admin", password)).status_code == 200
    users = server.cli("users", "list", "--json").stdout
    assert '"username": "admin"' in users and '"source": "first-start"' in users


def test_cli_errors_are_messages_with_exit_codes(tmp_path: Path) -> None:
    where = ("--data", str(tmp_path / "data"))
    assert run_cli("users", "add", "u1", "--org", "default", "--role", "wizard", *where, check=False).returncode == 2
    unknown_org = run_cli("users", "add", "u1", "--org", "nowhere", "--role", "clinician", *where, check=False)
    assert unknown_org.returncode == 2 and "no organisation 'nowhere'" in unknown_org.stderr
    made = run_cli("users", "add", "u1", "--org", "default", "--role", "clinician", *where)
    assert re.search(r"password \(shown once\): \S{16,}", made.stdout)
    again = run_cli("users", "add", "u1", "--org", "default", "--role", "clinician", *where, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    assert run_cli("users", "add", "bad name", "--org", "default", "--role", "clinician", *where, check=False).returncode == 2
    assert run_cli("tokens", "create", "ghost", *where, check=False).returncode == 1
    assert run_cli("tokens", "create", "u1", "--expires", "-1", *where, check=False).returncode == 2
    assert run_cli("tokens", "revoke", "999", *where, check=False).returncode == 1
    assert run_cli("users", "disable", "ghost", *where, check=False).returncode == 1
    short = subprocess.run(
        [sys.executable, "-m", "samarkiv", "users", "passwd", "u1", "--password-stdin", *where],
        input="short\n", capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert short.returncode == 2 and "at least 8" in short.stderr
    for result in (unknown_org, again, short):
        assert "Traceback" not in result.stderr


# --- DICOM User Identity Negotiation -------------------------------------------------


def _stored_count(server: ArchiveProcess) -> int:
    found = httpx.get(f"{server.http}/dicomweb/instances", headers=server.headers, timeout=30)
    return len(found.json()) if found.status_code == 200 else 0


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_dimse_user_identity(make_archive, sendable_files: list[Path], tmp_path: Path, mode: str) -> None:  # type: ignore[no-untyped-def]
    require_tool("storescu")
    server = make_archive(f'[auth]\ndimse_user_identity = "{mode}"\n')
    assert _add_user(server, "modality1", "technologist").returncode == 0
    one, two, three = sendable_files[:3]

    refused = storescu(server, one, extra=("--user", "modality1", "--password", "wrong password"))
    assert refused.returncode != 0 or "E:" in refused.stderr
    assert "Association Rejected" in refused.stdout + refused.stderr

    plain = storescu(server, one)  # no user identity: only the calling AE title
    if mode == "required":
        assert "Association Rejected" in plain.stdout + plain.stderr
    else:
        assert plain.returncode == 0 and "E:" not in plain.stderr, plain.stderr

    accepted = storescu(server, two, extra=("--user", "modality1", "--password", PASSWORD))
    assert accepted.returncode == 0 and "E:" not in accepted.stderr, accepted.stderr
    # an API token in the JWT field (type 5) works too
    token_file = tmp_path / "token"
    token_file.write_text(_token(server, "modality1"))
    with_token = storescu(server, three, extra=("--user", "x", "--jwt", str(token_file)))
    assert with_token.returncode == 0 and "E:" not in with_token.stderr, with_token.stderr
    assert _stored_count(server) == (2 if mode == "required" else 3)
