"""The login page (``/login``, ``/logout``) for browsers, above all the viewer,
and ``/api/me`` (who the caller is).

A local user's name and password become a session: a random id in an
HttpOnly, SameSite=Strict cookie (Secure over https), kept for
``[auth] session_hours``; the index holds only its SHA-256. The viewer at
/viewer is same-origin, so its DICOMweb requests carry the cookie.
"""

from __future__ import annotations

import html
from functools import cache
from importlib.resources import files
from string import Template
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from .http import SESSION_COOKIE, Authenticator, current_principal

MAX_FORM = 16 * 1024


@cache
def _template() -> Template:
    return Template(files("samarkiv.web").joinpath("templates/login.html").read_text(encoding="utf-8"))


def safe_next(value: str | None) -> str:
    """A local path to return to after login (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _page(aet: str, next_path: str, username: str = "", message: str = "", status: int = 200) -> HTMLResponse:
    body = _template().substitute(
        aet=html.escape(aet), next=html.escape(next_path, quote=True), username=html.escape(username, quote=True),
        message=f'<p class="error" id="login-error">{html.escape(message)}</p>' if message else "",
    )  # fmt: skip
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def create_router(authenticator: Authenticator) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    settings = authenticator.archive.settings

    @router.get("/login")
    def login_page(next: str | None = None) -> HTMLResponse:
        return _page(settings.aet, safe_next(next))

    @router.post("/login")
    async def login(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                return _page(settings.aet, "/", message="the form is too large", status=413)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
        username, password = form.get("username", "").strip(), form.get("password", "")
        next_path = safe_next(form.get("next"))
        client = request.client.host if request.client else None
        principal = await run_in_threadpool(authenticator.password, username, password, client) if username else None
        if principal is None or principal.user_pk is None:
            return _page(settings.aet, next_path, username, "Wrong user name or password.", status=401)
        session = await run_in_threadpool(authenticator.tokens.create_session, principal.user_pk, settings.auth.session_hours)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            SESSION_COOKIE, session, max_age=int(settings.auth.session_hours * 3600), path="/",
            httponly=True, samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip
        return response

    @router.api_route("/logout", methods=["GET", "POST"])
    async def logout(request: Request) -> Response:
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            await run_in_threadpool(authenticator.tokens.end_session, session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @router.get("/api/me")
    def me(request: Request) -> JSONResponse:
        """Who the caller is authenticated as (for the viewer and portal); a
        linked patient also gets ``patient``, their person number (the id of
        their ``/api/patients/{id}/access-log``)."""
        principal = current_principal(request)
        body: dict[str, object] = {
            "name": principal.name, "kind": principal.kind, "organisation": principal.org_code,
            "roles": sorted(principal.roles), "auth_method": principal.auth_method,
        }  # fmt: skip
        if principal.patient_key is not None:
            body["patient"] = principal.patient_key
        return JSONResponse(body)

    return router
