"""The landing page at /: who this archive is, what it holds, and links that work."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
from pydicom import dcmread

from conftest import storescu
from samarkiv import __version__
from samarkiv.web.landing import human_size


class _Page(HTMLParser):
    """Links and the holdings table of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, str] = {}  # text -> href
        self.counts: dict[str, str] = {}
        self.scripts = 0
        self._href: str | None = None
        self._in_counts = False
        self._cells: list[str] = []
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "a":
            self._href, self._text = attributes.get("href"), ""
        elif tag == "table" and attributes.get("id") == "counts":
            self._in_counts = True
        elif tag in ("th", "td"):
            self._text = ""
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links[self._text.strip()] = self._href
            self._href = None
        elif tag == "table":
            self._in_counts = False
        elif self._in_counts and tag in ("th", "td"):
            self._cells.append(self._text.strip())
            if len(self._cells) == 2:
                self.counts[self._cells[0]] = self._cells[1]
                self._cells = []

    def handle_data(self, data: str) -> None:
        self._text += data


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def test_landing_page_links_and_identity(archive) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{archive.http}/", timeout=10, headers=archive.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = _parse(response.text)
    assert page.scripts == 0  # plain HTML
    assert page.links["Viewer"] == "/viewer/"
    assert page.links["API documentation"] == "/docs"
    assert page.links["Health"] == "/healthz"
    assert page.links["Metrics"] == "/metrics"
    assert archive.aet in response.text
    assert __version__ in response.text
    assert str(archive.dicom_port) in response.text
    assert page.counts["Studies"] == "0" and page.counts["Instances"] == "0"
    with httpx.Client(base_url=archive.http, timeout=30, headers=archive.headers) as client:
        for target in ("/docs", "/healthz", "/metrics"):
            assert client.get(target).status_code == 200, target
        assert client.get("/viewer/").status_code in (200, 503)  # 503: viewer not installed


def test_landing_page_counts_what_is_stored(archive, sendable_files: list[Path]) -> None:  # type: ignore[no-untyped-def]
    by_name = {path.name: path for path in sendable_files}
    files = [by_name["CT_small.dcm"], by_name["MR_small.dcm"]]
    result = storescu(archive, *files)
    assert result.returncode == 0, result.stderr
    page = _parse(httpx.get(f"{archive.http}/", timeout=10, headers=archive.headers).text)
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    assert page.counts["Patients"] == str(len({h.PatientID for h in headers}))
    assert page.counts["Studies"] == str(len({h.StudyInstanceUID for h in headers}))
    assert page.counts["Series"] == str(len({h.SeriesInstanceUID for h in headers}))
    assert page.counts["Instances"] == "2"
    assert re.fullmatch(r"\d+\.\d (KiB|MiB)", page.counts["Stored"])
    assert page.counts["Patient conflicts"] == "0"


def test_landing_page_says_when_the_viewer_is_missing(make_archive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "no-viewer"
    empty.mkdir()
    server = make_archive(f'viewer_dir = "{empty}"\n')
    html = httpx.get(f"{server.http}/", timeout=10, headers=server.headers).text
    assert "not installed" in html and "scripts/install-viewer" in html


def test_human_size() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(5 * 1024**3) == "5.0 GiB"
    assert human_size(3 * 1024**5) == "3072.0 TiB"


def test_landing_page_counts_only_for_administrators_and_auditors(archive) -> None:  # type: ignore[no-untyped-def]
    """Counts of patients are information about patient data: an administrator or
    auditor sees the holdings; anyone else gets the page without the section
    (not zeros), and a visitor without credentials gets no page at all."""
    for role, shown in (("auditor", True), ("clinician", False), ("radiologist", False), ("patient", False)):
        token = archive.add_user(f"landing-{role}", role)[1]
        response = httpx.get(f"{archive.http}/", timeout=10, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, role
        page = _parse(response.text)
        assert ("Holdings" in response.text) is shown and bool(page.counts) is shown, role
        assert page.links["Viewer"] == "/viewer/" and archive.aet in response.text, role
    admin = _parse(httpx.get(f"{archive.http}/", timeout=10, headers=archive.headers).text)
    assert admin.counts["Patients"] == "0"
    for headers in ({}, {"Accept": "text/html"}):
        anonymous = httpx.get(f"{archive.http}/", timeout=10, headers=headers)
        assert anonymous.status_code in (401, 303) and "Holdings" not in anonymous.text
