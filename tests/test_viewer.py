"""The OHIF viewer at /viewer: the installed files served relocated, the SPA
fallback, the generated configuration, and end to end in headless Chromium
(study list, CT, US multi-frame, PDF and video objects) against a running
``samarkiv serve`` that holds real samples.

The browser reaches only 127.0.0.1: every other request is aborted and the
tests check there were none. Screenshots land in ``artifacts/viewer/``.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from _viewer import CANVAS_LIT_FRACTION, PageLog, chromium, local_page, make_pdf, make_video
from conftest import ArchiveProcess, require, storescu
from samarkiv.config import Settings
from samarkiv.web.viewer import MARKER, find_viewer, rewrite_index

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "viewer"
SAMPLES = {"CT": "CT_small.dcm", "MR": "MR_small.dcm", "US": "color3d_jpeg_baseline.dcm"}


@pytest.fixture
def index_url(tmp_path: Path) -> str:
    """The viewer serves files; one index backend is enough (SQLite)."""
    return f"sqlite:///{tmp_path / 'index.sqlite'}"


@pytest.fixture(scope="module")
def viewer_dir() -> Path:
    install = find_viewer(Settings().viewer_dir)
    require(install.installed, f"OHIF viewer not installed in {install.directory} (run scripts/install-viewer)")
    return install.directory


VIEWER_USER, VIEWER_PASSWORD = "reader", "viewer-test-password"


@dataclass
class Study:
    uid: str
    patient: str
    modality: str


@dataclass
class ViewerArchive:
    server: ArchiveProcess
    studies: dict[str, Study]  # by kind: CT, MR, US, PDF, VIDEO

    @property
    def http(self) -> str:
        return self.server.http

    @property
    def headers(self) -> dict[str, str]:
        return self.server.headers


@pytest.fixture(scope="module")
def viewer_archive(tmp_path_factory: pytest.TempPathFactory, sample_files: list[Path], viewer_dir: Path) -> Iterator[ViewerArchive]:
    """One running archive (SQLite) holding a CT, an MR, a US multi-frame, an
    Encapsulated PDF and a video, for every test of this module."""
    work = tmp_path_factory.mktemp("viewer")
    by_name = {path.name: path for path in sample_files}
    require(all(name in by_name for name in SAMPLES.values()), "pydicom-data sample files missing")
    files = {kind: by_name[name] for kind, name in SAMPLES.items()}
    files["PDF"] = work / "pdf.dcm"
    make_pdf(files["PDF"])
    files["VIDEO"] = work / "video.dcm"
    make_video(files["VIDEO"], work)

    server = ArchiveProcess(work / "archive", f"sqlite:///{work / 'index.sqlite'}")
    server.start()
    try:
        server.add_user(VIEWER_USER, "radiologist", password=VIEWER_PASSWORD)
        result = storescu(server, *files.values())
        assert result.returncode == 0 and "E:" not in result.stderr, result.stderr
        studies = {}
        for kind, path in files.items():
            ds = dcmread(path, stop_before_pixels=True)
            studies[kind] = Study(ds.StudyInstanceUID, str(ds.PatientName), ds.Modality)
        yield ViewerArchive(server, studies)
    finally:
        server.kill()


# --- serving the installed files ------------------------------------------------------


def test_viewer_path_redirects_to_its_folder(viewer_archive: ViewerArchive) -> None:
    response = httpx.get(f"{viewer_archive.http}/viewer", timeout=10, headers=viewer_archive.headers)
    assert response.status_code == 308
    assert response.headers["location"] == "/viewer/"


def test_index_names_every_asset_under_the_viewer_path(viewer_archive: ViewerArchive) -> None:
    response = httpx.get(f"{viewer_archive.http}/viewer/", timeout=10, headers=viewer_archive.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    urls = re.findall(r'(?:href|src|content)="(/[^"]*)"', html)
    assert urls, "index.html names no assets"
    assert all(url.startswith("/viewer/") for url in urls), [u for u in urls if not u.startswith("/viewer/")]
    assert 'window.PUBLIC_URL="/viewer/"' in html
    assert 'PUBLIC_URL="/"' not in html
    for url in urls:
        if url.endswith((".js", ".css")):
            assert httpx.get(viewer_archive.http + url, timeout=30, headers=viewer_archive.headers).status_code == 200, url


def test_client_side_routes_fall_back_to_index(viewer_archive: ViewerArchive) -> None:
    index = httpx.get(f"{viewer_archive.http}/viewer/", timeout=10, headers=viewer_archive.headers).text
    for route in ("viewer?StudyInstanceUIDs=1.2.3", "segmentation", "index.html", "local"):
        response = httpx.get(f"{viewer_archive.http}/viewer/{route}", timeout=10, headers=viewer_archive.headers)
        assert response.status_code == 200, route
        assert response.text == index, route
        assert response.headers["cache-control"] == "no-cache"


def test_missing_assets_are_404_and_escapes_are_refused(viewer_archive: ViewerArchive, viewer_dir: Path) -> None:
    for path in ("/viewer/0000.bundle.missing.js", "/viewer/assets/nothing.png"):
        assert httpx.get(viewer_archive.http + path, timeout=10, headers=viewer_archive.headers).status_code == 404, path  # not index.html
    outside = viewer_dir.parent.parent.parent / "pyvenv.cfg"  # <venv>/share/samarkiv/viewer -> <venv>
    for path in ("/viewer/%2e%2e/%2e%2e/%2e%2e/pyvenv.cfg", "/viewer/..%2f..%2f..%2fpyvenv.cfg"):
        response = httpx.get(viewer_archive.http + path, timeout=10, headers=viewer_archive.headers)
        assert response.status_code in (200, 404), path  # the SPA index or nothing
        if outside.is_file():
            assert outside.read_text()[:40] not in response.text, path


def test_assets_are_precompressed_cached_and_revalidated(viewer_archive: ViewerArchive, viewer_dir: Path) -> None:
    bundle = next(viewer_dir.glob("app.bundle.*.js")).name
    url = f"{viewer_archive.http}/viewer/{bundle}"
    with httpx.Client(timeout=60, headers=viewer_archive.headers) as client:
        zipped = client.get(url, headers={"Accept-Encoding": "gzip"})
        assert zipped.status_code == 200
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.headers["content-type"].startswith("text/javascript")
        assert "immutable" in zipped.headers["cache-control"]
        assert zipped.content == (viewer_dir / bundle).read_bytes()  # httpx decodes gzip
        plain = client.get(url, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert plain.content == (viewer_dir / bundle).read_bytes()
        again = client.get(url, headers={"Accept-Encoding": "gzip", "If-None-Match": zipped.headers["etag"]})
        assert again.status_code == 304
        wasm = next(viewer_dir.glob("*.wasm")).name
        response = client.get(f"{viewer_archive.http}/viewer/{wasm}", headers={"Accept-Encoding": "gzip"})
        assert response.headers["content-type"] == "application/wasm"
    twin = viewer_dir / (bundle + ".gz")
    assert gzip.decompress(twin.read_bytes()) == (viewer_dir / bundle).read_bytes()


def test_app_config_points_at_this_archive(viewer_archive: ViewerArchive) -> None:
    response = httpx.get(f"{viewer_archive.http}/viewer/app-config.js", timeout=10, headers=viewer_archive.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["cache-control"] == "no-cache"
    config = json.loads(re.search(r"window\.config = (\{.*?\n\});", response.text, re.S).group(1))
    assert config["routerBasename"] == "/viewer"
    [source] = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    dicomweb = source["configuration"]
    assert dicomweb["qidoRoot"] == dicomweb["wadoRoot"] == "/dicomweb"  # made absolute in the page
    assert dicomweb["imageRendering"] == "wadors"
    assert dicomweb["qidoSupportsIncludeField"] and dicomweb["supportsFuzzyMatching"]
    assert dicomweb["enableStudyLazyLoad"] and dicomweb["bulkDataURI"]["enabled"]
    assert dicomweb["omitQuotationForMultipartRequest"] is True
    assert dicomweb["staticWado"] is False


def test_app_config_follows_the_configured_dicomweb_root(make_archive) -> None:  # type: ignore[no-untyped-def]
    server = make_archive('dicomweb_root = "/pacs/dicom-web"\n')
    script = httpx.get(f"{server.http}/viewer/app-config.js", timeout=10, headers=server.headers).text
    config = json.loads(re.search(r"window\.config = (\{.*?\n\});", script, re.S).group(1))
    dicomweb = config["dataSources"][0]["configuration"]
    assert dicomweb["qidoRoot"] == dicomweb["wadoRoot"] == "/pacs/dicom-web"
    assert dicomweb["wadoUriRoot"] == "/wado"
    assert "window.location.origin + c[key]" in script
    studies = httpx.get(f"{server.http}/pacs/dicom-web/studies", headers={**server.headers, "Accept": "application/dicom+json"}, timeout=10)
    assert studies.status_code in (200, 204)  # the viewer's root is where QIDO-RS answers


def test_index_rewrite_moves_root_urls_only() -> None:
    html = '<script>window.PUBLIC_URL="/"</script><link href="/a.css"><script src="/b.js"></script><a href="//cdn.example/x">'
    rewritten = rewrite_index(html, "/viewer/")
    assert 'window.PUBLIC_URL="/viewer/"' in rewritten
    assert 'href="/viewer/a.css"' in rewritten and 'src="/viewer/b.js"' in rewritten
    assert 'href="//cdn.example/x"' in rewritten


def test_installed_bundles_load_from_the_public_url(viewer_dir: Path) -> None:
    """The install made every webpack runtime relocatable (no hard-coded "/")."""
    assert (viewer_dir / MARKER).read_text().startswith("@ohif/app@")
    for script in viewer_dir.glob("*.js"):
        text = script.read_text(encoding="utf-8", errors="replace")
        assert '__webpack_require__.p = "/";' not in text, script.name
    assert "url(/" not in (viewer_dir / "app.bundle.css").read_text()


def test_install_script_is_idempotent(viewer_dir: Path) -> None:
    if viewer_dir.resolve() != (ROOT / ".venv/share/samarkiv/viewer").resolve():
        pytest.skip("viewer installed outside .venv; the install script's default folder is not it")
    marker = viewer_dir / MARKER
    before = marker.stat().st_mtime_ns
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/install-viewer")], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "npm_config_offline": "true"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert marker.stat().st_mtime_ns == before  # nothing fetched or rewritten


def test_viewer_not_installed_says_how_to_install(make_archive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "no-viewer"
    empty.mkdir()
    server = make_archive(f'viewer_dir = "{empty}"\n')
    response = httpx.get(f"{server.http}/viewer/", timeout=10, headers=server.headers)
    assert response.status_code == 503
    assert "scripts/install-viewer" in response.text
    assert httpx.get(f"{server.http}/healthz", timeout=10, headers=server.headers).status_code == 200


# --- in the browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(viewer_archive: ViewerArchive):  # type: ignore[no-untyped-def]
    with chromium() as browser:
        yield browser


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def page(browser, page_log: PageLog, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    with local_page(browser, page_log) as page:
        yield page
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
    assert page_log.blocked == [], f"the viewer tried to leave 127.0.0.1: {page_log.blocked}"


def _goto_logged_in(page, url: str) -> None:  # type: ignore[no-untyped-def]
    """Open ``url``; the archive sends a browser without a session to its login
    page, which returns to ``url`` with a session cookie that the viewer's
    DICOMweb requests then carry."""
    page.goto(url, wait_until="domcontentloaded")
    if "/login" in page.url:
        page.fill("#username", VIEWER_USER)
        page.fill("#password", VIEWER_PASSWORD)
        with page.expect_navigation(wait_until="domcontentloaded"):
            page.click("#login")
    assert "/login" not in page.url, page.url


def _open_study_list(page, archive: ViewerArchive) -> None:  # type: ignore[no-untyped-def]
    _goto_logged_in(page, f"{archive.http}/viewer/")
    page.wait_for_selector("text=Study List")


def _open_study(page, archive: ViewerArchive, kind: str) -> None:  # type: ignore[no-untyped-def]
    _goto_logged_in(page, f"{archive.http}/viewer/viewer?StudyInstanceUIDs={archive.studies[kind].uid}")


def _wait_for_lit_canvas(page) -> float:  # type: ignore[no-untyped-def]
    """Wait until a viewport canvas shows an image (not all black); its lit fraction."""
    page.wait_for_function(
        f"() => Array.from(document.querySelectorAll('canvas.cornerstone-canvas')).some(c => ({CANVAS_LIT_FRACTION})(c) > 0.02)",
        timeout=90_000,
    )
    return max(page.eval_on_selector_all("canvas.cornerstone-canvas", f"cs => cs.map({CANVAS_LIT_FRACTION})"))


def _relevant_errors(log: PageLog) -> list[str]:
    return log.page_errors + log.console_errors


def test_viewer_loads_offline_and_queries_this_archive(page, page_log: PageLog, viewer_archive: ViewerArchive) -> None:  # type: ignore[no-untyped-def]
    _open_study_list(page, viewer_archive)
    page.wait_for_function("() => performance.getEntriesByType('resource').some(e => e.name.includes('/dicomweb/studies'))")
    roots = page.evaluate("() => { const c = window.config.dataSources[0].configuration; return [c.qidoRoot, c.wadoRoot]; }")
    assert roots == [f"{viewer_archive.http}/dicomweb"] * 2
    studies_queries = [url for url in page_log.requests if "/dicomweb/studies?" in url]
    assert studies_queries and all(url.startswith(f"{viewer_archive.http}/dicomweb/studies?") for url in studies_queries)
    assert "includefield=" in studies_queries[0]
    viewer_failures = [(status, url) for status, url in page_log.failed_responses if "/viewer/" in url]
    assert viewer_failures == []


def _listed_name(patient: str) -> str:
    """How OHIF's study list shows a Person Name: "Family, Given"."""
    family, _, given = patient.partition("^")
    return f"{family}, {given.split('^')[0]}" if given.strip("^") else family


def test_study_list_shows_the_stored_studies(page, page_log: PageLog, viewer_archive: ViewerArchive) -> None:  # type: ignore[no-untyped-def]
    _open_study_list(page, viewer_archive)
    for kind, study in viewer_archive.studies.items():
        row = page.get_by_text(_listed_name(study.patient), exact=True).first
        row.wait_for(timeout=30_000)
    text = page.inner_text("body")
    assert f"1-{len(viewer_archive.studies)} of {len(viewer_archive.studies)}" in text
    for study in viewer_archive.studies.values():
        assert study.modality in text
    assert _relevant_errors(page_log) == []


def test_ct_study_opens_from_the_list_and_renders(page, page_log: PageLog, viewer_archive: ViewerArchive) -> None:  # type: ignore[no-untyped-def]
    """The issue's end-to-end check: the list, a CT study, a rendered canvas, no console errors."""
    _open_study_list(page, viewer_archive)
    page.get_by_text(_listed_name(viewer_archive.studies["CT"].patient), exact=True).first.click()
    page.get_by_role("button", name=re.compile("Basic Viewer")).first.click()
    page.wait_for_url(re.compile(r"/viewer/viewer\?"))
    lit = _wait_for_lit_canvas(page)
    assert lit > 0.02
    assert _relevant_errors(page_log) == []


def test_us_multiframe_opens(page, page_log: PageLog, viewer_archive: ViewerArchive) -> None:  # type: ignore[no-untyped-def]
    _open_study(page, viewer_archive, "US")
    assert _wait_for_lit_canvas(page) > 0.02
    frame_requests = [url for url in page_log.requests if "/frames/" in url]
    assert frame_requests, "no WADO-RS frame was fetched"
    page.get_by_text(re.compile(r"\(1/120\)")).first.wait_for()  # all frames known to the viewport
    assert _relevant_errors(page_log) == []


def test_mr_study_renders(page, page_log: PageLog, viewer_archive: ViewerArchive) -> None:  # type: ignore[no-untyped-def]
    _open_study(page, viewer_archive, "MR")
    assert _wait_for_lit_canvas(page) > 0.02
    assert _relevant_errors(page_log) == []


def test_pdf_opens_in_the_pdf_viewport(page, page_log: PageLog, viewer_archive: ViewerArchive) -> None:  # type: ignore[no-untyped-def]
    _open_study(page, viewer_archive, "PDF")
    pdf = page.wait_for_selector('object[type="application/pdf"][data]', timeout=60_000)
    url = pdf.get_attribute("data")
    status, media_type, head = page.evaluate(
        """async (url) => { const r = await fetch(url);
             const bytes = new Uint8Array(await r.arrayBuffer());
             return [r.status, r.headers.get('content-type'), String.fromCharCode(...bytes.slice(0, 5))]; }""",
        url,
    )
    assert status == 200
    assert media_type.startswith("application/pdf")
    assert head == "%PDF-"
    assert _relevant_errors(page_log) == []


def test_video_opens_in_the_video_viewport(page, page_log: PageLog, viewer_archive: ViewerArchive) -> None:  # type: ignore[no-untyped-def]
    """OHIF's video viewport plays the object's /rendered stream (MP4) and paints it on its canvas."""
    with page.expect_response(lambda r: r.url.endswith("/rendered") and r.status == 200, timeout=60_000) as video:
        _open_study(page, viewer_archive, "VIDEO")
    assert video.value.headers["content-type"].startswith("video/mp4")
    assert _wait_for_lit_canvas(page) > 0.02
    assert _relevant_errors(page_log) == []
