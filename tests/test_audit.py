"""The audit trail (samarkiv/audit/): a hash chain that detects tampering, one chain
across threads and processes, FHIR AuditEvent export, DICOM audit messages over
real UDP and TLS syslog listeners, and a patient's access log in plain words.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import httpx
import pytest
from sqlalchemy import delete, func, select, update

from conftest import ArchiveProcess, run_cli
from samarkiv.access.principal import Principal
from samarkiv.audit import AuditError, AuditEvent, AuditTrail
from samarkiv.audit.config import AuditSettings
from samarkiv.audit.syslog import SyslogForwarder
from samarkiv.audit.verify import verify_chain
from samarkiv.index.audit_schema import audit_anchors, audit_events, audit_head, audit_patients
from samarkiv.index.engine import create_index_engine, migrate
from test_fhir import PNR, _dataset, _register, _send, fhir_r4_errors

ANNA = Principal(
    name="Anna Berg", kind="user", org_code="KS", roles=frozenset({"radiologist"}), user_pk=7,
    auth_method="password", address="10.1.2.3",
)  # fmt: skip
ERIK = Principal(name="Erik Lund", kind="user", org_code="SU", roles=frozenset({"clinician"}), auth_method="oidc")


@pytest.fixture
def engine(index_url: str):  # type: ignore[no-untyped-def]
    writer = create_index_engine(index_url, writer=index_url.startswith("sqlite"))
    migrate(writer)
    yield writer
    writer.dispose()


def _events(n: int, person: int = 1, start: int = 0) -> list[AuditEvent]:
    return [
        AuditEvent("view", ANNA, patient_keys=[person], study_uid=f"1.2.826.0.1.3680043.2.{start + i}", count=3,
                   purpose="TREAT", care_relationship=11)
        for i in range(n)
    ]  # fmt: skip


def _verify_cli(index_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("audit", "verify", "--data", str(tmp_path / "data"), "--index-url", index_url, check=False)


# --- the chain -------------------------------------------------------------------------------------


def test_records_are_chained_anchored_and_verified(engine, index_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trail = AuditTrail(engine, anchor_every=10)
    for event in _events(25):
        trail.record(event)
    trail.record(AuditEvent("break-glass", ERIK, patient_keys=[1, 2], reason="unconscious in the ER", purpose="ETREAT"))
    assert trail.flush(30)
    with engine.begin() as conn:
        seqs = trail.record_in(conn, [AuditEvent("query", ERIK, outcome="denied", outcome_detail="no care relationship")])
    trail.close()
    assert seqs == [27]
    with engine.connect() as conn:
        rows = conn.execute(select(audit_events).order_by(audit_events.c.seq)).all()
        assert [r.seq for r in rows] == list(range(1, 28))
        assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:]))
        assert rows[0].prev_hash == "0" * 64 and len({r.hash for r in rows}) == 27
        glass = rows[25]
        assert (glass.action, glass.flagged, glass.review_status, glass.patient_keys) == ("break-glass", True, "pending", "1,2")
        assert (glass.user_name, glass.org_code, glass.roles, glass.purpose) == ("Erik Lund", "SU", "clinician", "ETREAT")
        assert rows[0].address == "10.1.2.3" and rows[0].user_pk == 7 and rows[0].care_relationship == 11
        assert conn.execute(select(func.count()).select_from(audit_anchors)).scalar_one() >= 1
        assert conn.execute(select(audit_head.c.seq)).scalar_one() == 27
        assert verify_chain(conn).ok
    result = _verify_cli(index_url, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "intact: 27 records" in result.stdout


def test_bad_events_are_refused_on_the_callers_thread(engine) -> None:  # type: ignore[no-untyped-def]
    trail = AuditTrail(engine)
    with pytest.raises(AuditError, match="reason"):
        trail.record(AuditEvent("break-glass", ERIK, patient_keys=[1]))
    with pytest.raises(AuditError, match="unknown audit action"):
        trail.record(AuditEvent("peek", ERIK))
    with pytest.raises(AuditError, match="unknown audit outcome"):
        trail.record(AuditEvent("view", ERIK, outcome="maybe"))
    trail.close()


def _tamper(conn: Any, how: str) -> int:
    """Change the store behind the trail's back; returns the seq verify must name."""
    e = audit_events
    if how == "edit":
        conn.execute(update(e).where(e.c.seq == 7).values(user_name="Someone Else"))
        return 7
    if how == "delete":
        conn.execute(delete(e).where(e.c.seq == 9))
        conn.execute(delete(audit_patients).where(audit_patients.c.seq == 9))
        return 9
    if how == "swap":
        conn.execute(update(e).where(e.c.seq == 5).values(seq=-5))
        conn.execute(update(e).where(e.c.seq == 6).values(seq=5))
        conn.execute(update(e).where(e.c.seq == -5).values(seq=6))
        return 5
    if how == "delete-last":
        last = conn.execute(select(func.max(e.c.seq))).scalar_one()
        conn.execute(delete(e).where(e.c.seq == last))
        conn.execute(delete(audit_patients).where(audit_patients.c.seq == last))
        return last
    if how == "anchor":
        seq = conn.execute(select(func.min(audit_anchors.c.seq))).scalar_one()
        conn.execute(update(audit_anchors).where(audit_anchors.c.seq == seq).values(hash="f" * 64))
        return seq
    if how == "review":
        conn.execute(update(e).where(e.c.seq == 3).values(review_status="closed", review_note="nothing to see"))
        return 3
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["edit", "delete", "swap", "delete-last", "anchor", "review"])
def test_verify_names_the_tampered_record(engine, index_url: str, tmp_path: Path, how: str) -> None:  # type: ignore[no-untyped-def]
    trail = AuditTrail(engine, anchor_every=4)
    for i, event in enumerate(_events(12)):
        event.flagged = i == 2
        trail.record(event)
        if i % 4 == 3:
            trail.flush()  # several batches: anchors inside the chain
    trail.close()
    assert _verify_cli(index_url, tmp_path).returncode == 0
    with engine.begin() as conn:
        seq = _tamper(conn, how)
    result = _verify_cli(index_url, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"BROKEN at record {seq}:" in result.stdout, result.stdout
    expected = {"edit": "edited", "delete": "deleted", "swap": "reordered", "delete-last": "deleted from the end",
                "anchor": "broken anchor", "review": "review closed without a review record"}[how]  # fmt: skip
    assert expected in result.stdout.splitlines()[0], result.stdout


def test_review_lists_and_closes_flagged_events(engine, index_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    trail = AuditTrail(engine)
    trail.record(AuditEvent("break-glass", ERIK, patient_keys=[4], reason="stroke alarm", owner_org="KS"))
    trail.record(AuditEvent("view", ANNA, patient_keys=[4], flagged=True, reason="odd hour"))
    trail.record(AuditEvent("view", ANNA, patient_keys=[4]))
    trail.close()
    common = ("--data", str(tmp_path / "data"), "--index-url", index_url)
    listed = json.loads(run_cli("audit", "review", "--json", *common).stdout)
    assert [r["seq"] for r in listed] == [1, 2]
    by_ks = json.loads(run_cli("audit", "review", "--org", "KS", "--json", *common).stdout)
    assert [r["seq"] for r in by_ks] == [1, 2]  # Erik's break-glass on KS data, and a KS user's flagged view
    by_su = json.loads(run_cli("audit", "review", "--org", "SU", "--json", *common).stdout)
    assert [r["seq"] for r in by_su] == [1]
    assert run_cli("audit", "review", "--close", "1", *common, check=False).returncode == 2  # no note
    assert run_cli("audit", "review", "--close", "3", "--note", "x", *common, check=False).returncode == 1
    closed = run_cli("audit", "review", "--close", "1", "--note", "justified: stroke", "--by", "auditor1", *common)
    assert "record 4" in closed.stdout
    assert [r["seq"] for r in json.loads(run_cli("audit", "review", "--json", *common).stdout)] == [2]
    assert _verify_cli(index_url, tmp_path).returncode == 0
    with engine.connect() as conn:
        row = conn.execute(select(audit_events).where(audit_events.c.seq == 1)).one()
        assert (row.review_status, row.review_note, row.reviewed_by) == ("closed", "justified: stroke", "auditor1")
        review = conn.execute(select(audit_events).where(audit_events.c.seq == 4)).one()
        assert review.action == "review" and json.loads(review.detail) == {"closes": 1}


# --- concurrency ----------------------------------------------------------------------------------


def test_two_threads_with_their_own_trails_keep_one_chain(index_url: str, engine) -> None:  # type: ignore[no-untyped-def]
    engines = [create_index_engine(index_url, writer=index_url.startswith("sqlite")) for _ in range(2)]
    trails = [AuditTrail(e, batch_size=7, anchor_every=20) for e in engines]

    def work(trail: AuditTrail, person: int) -> None:
        for event in _events(150, person):
            trail.record(event)
        trail.flush()

    threads = [threading.Thread(target=work, args=(t, i + 1)) for i, t in enumerate(trails)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t, e in zip(trails, engines):
        t.close()
        e.dispose()
    with engine.connect() as conn:
        result = verify_chain(conn)
        assert result.ok and result.records == 300, result.problems[:3]
        assert conn.execute(select(func.count()).select_from(audit_patients).where(audit_patients.c.patient_key == 2)).scalar_one() == 150


_WRITER = """
import sys
from samarkiv.index.engine import create_index_engine
from samarkiv.audit import AuditTrail, AuditEvent
from samarkiv.access.principal import Principal
engine = create_index_engine(sys.argv[1])
trail = AuditTrail(engine, batch_size=5, anchor_every=25)
who = Principal(name=sys.argv[2], kind="user", org_code="KS")
for i in range(200):
    trail.record(AuditEvent("query", who, patient_keys=[int(sys.argv[3])]))
trail.close()
"""


def test_two_processes_on_postgresql_keep_one_chain(postgres_url: str) -> None:
    engine = create_index_engine(postgres_url)
    migrate(engine)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, postgres_url, f"writer{i}", str(i)]) for i in (1, 2)
    ]
    assert [p.wait(120) for p in procs] == [0, 0]
    with engine.connect() as conn:
        result = verify_chain(conn)
        assert result.ok and result.records == 400, result.problems[:3]
        writers = conn.execute(select(audit_events.c.user_name, func.count()).group_by(audit_events.c.user_name)).all()
    engine.dispose()
    assert sorted(writers) == [("writer1", 200), ("writer2", 200)]


# --- a region with a patient: FHIR, the access log --------------------------------------------------


@pytest.fixture
def patient_with_log(archive: ArchiveProcess, tmp_path: Path) -> tuple[ArchiveProcess, int, str]:
    """A person (with personnummer) with a CT study at Karolinska, and an access history."""
    archive.cli("org", "add", "KS", "--name", "Karolinska", "--issuer", "KS")
    archive.cli("org", "add", "SU", "--name", "Sahlgrenska", "--issuer", "SU")
    files, sent = _dataset(tmp_path, "KS-1001", "KS", pnr=PNR, study_date="20240301", modality="CT", count=2)
    _send(archive, files)
    _register(archive, "KS-1001", "KS", "KS", PNR)
    from samarkiv.audit.access_log import resolve_patient

    engine = create_index_engine(archive.index_url, writer=archive.index_url.startswith("sqlite"))
    with engine.connect() as conn:
        person = resolve_patient(conn, "19121212-1212")
        assert resolve_patient(conn, "KS-1001^KS") == person
    trail = AuditTrail(engine)
    at = dt.datetime(2024, 5, 2, 14, 3, tzinfo=dt.UTC)
    trail.record(AuditEvent("view", ANNA, patient_keys=[person], study_uid=sent.study_uid, count=2, purpose="TREAT",
                            care_relationship=11, owner_org="KS", time=at))  # fmt: skip
    trail.record(AuditEvent("break-glass", ERIK, patient_keys=[person], study_uid=sent.study_uid, purpose="ETREAT",
                            reason="unconscious in the emergency room", owner_org="KS", time=at + dt.timedelta(days=1)))  # fmt: skip
    trail.record(AuditEvent("retrieve", ERIK, outcome="denied", patient_keys=[person], study_uid=sent.study_uid,
                            owner_org="KS", time=at + dt.timedelta(days=2)))  # fmt: skip
    trail.record(AuditEvent("view", ANNA, patient_keys=[person + 1000], time=at))  # someone else
    trail.close()
    engine.dispose()
    return archive, person, sent.study_uid


def test_patient_access_log_in_plain_words(patient_with_log) -> None:  # type: ignore[no-untyped-def]
    archive, person, _study = patient_with_log
    out = archive.cli("audit", "patient", "19121212-1212").stdout
    lines = [line for line in out.splitlines() if line.strip()]
    # the study arrived over C-STORE (today), audited once for the study and association
    assert re.fullmatch(r"The DICOM system aet:STORESCU at Default organisation stored your CT study of 2024-03-01"
                        r" on \d{4}-\d\d-\d\d at \d\d:\d\d UTC because: treatment\.", lines[0]), lines[0]  # fmt: skip
    assert lines[1:] == [
        "Anna Berg (radiologist) at Karolinska viewed your CT study of 2024-03-01 (2 images) on 2024-05-02 at 14:03 UTC"
        " because: treatment (care relationship 11).",
        "Erik Lund (clinician) at Sahlgrenska used emergency access to open your CT study of 2024-03-01 on 2024-05-03"
        " at 14:03 UTC because: emergency access (reason: unconscious in the emergency room).",
        "Erik Lund (clinician) at Sahlgrenska tried to retrieve your CT study of 2024-03-01 on 2024-05-04 at 14:03 UTC"
        " and was refused.",
    ]
    assert archive.cli("audit", "patient", "KS-1001^KS").stdout == out
    unknown = archive.cli("audit", "patient", "nobody^KS", check=False)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    response = httpx.get(f"{archive.http}/api/patients/{person}/access-log", headers=archive.headers, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient"] == person
    # Reading a patient's log is itself an access to their data, audited as audit-read:
    # the CLI reads above show up here after the three accesses made in 2024.
    seeded = [e for e in body["entries"] if e["action"] != "audit-read"]
    assert [e["text"] for e in seeded] == lines
    assert [e["action"] for e in seeded] == ["store", "view", "break-glass", "retrieve"]
    by_pnr = httpx.get(f"{archive.http}/api/patients/{PNR}/access-log", headers=archive.headers, timeout=30).json()
    assert by_pnr["entries"][: len(seeded)] == seeded


def test_fhir_audit_events_are_valid_r4(patient_with_log) -> None:  # type: ignore[no-untyped-def]
    archive, person, study = patient_with_log
    base = f"{archive.http}/fhir/AuditEvent"

    def get(url: str, **params: str) -> dict[str, Any]:
        response = httpx.get(url, params=params, headers=archive.headers, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        body = response.json()
        assert fhir_r4_errors(body) == []
        return body

    bundle = get(base, patient=f"Patient/{person}", date="lt2025")  # the 2024 accesses; reads of the trail come later
    assert bundle["type"] == "searchset" and bundle["total"] == 3
    events = [e["resource"] for e in bundle["entry"]]
    assert [e["type"]["code"] for e in events] == ["110103", "110113", "110104"]
    assert [e["outcome"] for e in events] == ["0", "0", "4"]
    glass = events[1]
    assert {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110127", "display": "Emergency Override Started"} in glass["subtype"]
    assert glass["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    assert glass["agent"][0]["who"]["identifier"]["value"] == "Erik Lund"
    whats = [ent["what"] for ent in glass["entity"]]
    assert {"reference": f"Patient/{person}"} in whats
    assert any(w.get("identifier", {}).get("value") == f"urn:oid:{study}" for w in whats)
    assert get(base, patient=str(person), date="2024-05-03")["total"] == 1
    later = get(base, patient=str(person), date="ge2024-05-03")["entry"]  # and the reads of the trail since
    assert sum(e["resource"]["recorded"].startswith("2024") for e in later) == 2
    assert get(base, date="lt2024-05-02")["total"] == 0
    paged = get(base, patient=f"Patient/{person}", _count="2")
    assert len(paged["entry"]) == 2 and any(link["relation"] == "next" for link in paged["link"])
    one = get(f"{base}/{events[0]['id']}")
    assert one["id"] == events[0]["id"]
    bad = httpx.get(base, params={"date": "yesterday"}, headers=archive.headers, timeout=30)
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    export = httpx.get(f"{base}/$export", params={"patient": f"Patient/{person}"}, headers=archive.headers, timeout=30)
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/fhir+ndjson")
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert [r["id"] for r in lines if r["recorded"].startswith("2024")] == [e["id"] for e in events]
    assert all(fhir_r4_errors(r) == [] for r in lines)
    cli = archive.cli("audit", "export", "--ndjson").stdout.splitlines()
    seeded = [line for line in cli if json.loads(line)["recorded"].startswith("2024")]  # not the reads since
    assert len(seeded) == 4 and all(fhir_r4_errors(json.loads(line)) == [] for line in cli)


# --- DICOM audit messages over syslog ----------------------------------------------------------------

_RFC5424 = re.compile(rb"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|\[.*?\]) \xef\xbb\xbf(.*)$", re.S)


def _parse_syslog(message: bytes) -> tuple[int, str, ET.Element]:
    match = _RFC5424.match(message)
    assert match, message[:200]
    return int(match[1]), match[6].decode(), ET.fromstring(match[8])


def _check_messages(messages: list[bytes], study: str) -> None:
    parsed = [_parse_syslog(m) for m in messages]
    assert [p[1] for p in parsed] == ["IHE+RFC-3881"] * 3
    assert [p[0] for p in parsed] == [85, 84, 84]  # authpriv.notice; break-glass and refusals warnings
    view, glass, query = (p[2] for p in parsed)
    assert view.tag == "AuditMessage"
    assert view.find("EventIdentification/EventID").attrib == {
        "csd-code": "110103", "codeSystemName": "DCM", "originalText": "DICOM Instances Accessed"}  # fmt: skip
    assert view.find("EventIdentification").get("EventActionCode") == "R"
    requestor = view.find("ActiveParticipant[@UserIsRequestor='true']")
    assert requestor.get("UserID") == "Anna Berg" and requestor.get("NetworkAccessPointID") == "10.1.2.3"
    objects = {o.find("ParticipantObjectIDTypeCode").get("csd-code"): o for o in view.findall("ParticipantObjectIdentification")}
    assert objects["110180"].get("ParticipantObjectID") == study
    assert objects["2"].get("ParticipantObjectTypeCode") == "1"
    assert glass.find("EventIdentification/EventID").get("csd-code") == "110113"
    assert glass.find("EventIdentification/EventTypeCode").get("csd-code") == "110127"
    assert query.find("EventIdentification/EventID").get("csd-code") == "110112"
    assert query.find("EventIdentification").get("EventOutcomeIndicator") == "4"
    assert view.find("AuditSourceIdentification").get("AuditSourceID")


def _send_three(engine: Any, settings: AuditSettings, study: str) -> SyslogForwarder:
    forwarder = SyslogForwarder(settings, engine=engine)
    trail = AuditTrail(engine, forward=forwarder)
    trail.record(AuditEvent("view", ANNA, patient_keys=[1], study_uid=study, count=3, purpose="TREAT"))
    trail.record(AuditEvent("break-glass", ERIK, patient_keys=[1], study_uid=study, reason="trauma"))
    trail.record(AuditEvent("query", ERIK, outcome="denied", detail={"PatientID": "KS-1001"}))
    trail.close()
    assert forwarder.flush(20)
    return forwarder


def test_syslog_udp_delivers_dicom_audit_messages(engine) -> None:  # type: ignore[no-untyped-def]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        study = "1.2.826.0.1.3680043.2.999"
        forwarder = _send_three(engine, AuditSettings(syslog=f"udp://127.0.0.1:{port}"), study)
        messages = [server.recv(65535) for _ in range(3)]
        forwarder.close()
    _check_messages(messages, study)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit collector")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = folder / "collector.pem", folder / "collector.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


def _read_frames(conn: ssl.SSLSocket, n: int) -> list[bytes]:
    """RFC 5425 octet-counted frames."""
    buffer, frames = b"", []
    while len(frames) < n:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buffer += chunk
        while b" " in buffer:
            size, _, rest = buffer.partition(b" ")
            if len(rest) < int(size):
                break
            frames.append(rest[: int(size)])
            buffer = rest[int(size):]
    return frames


def test_syslog_tls_delivers_dicom_audit_messages(engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("cryptography", reason="cryptography makes the test's self-signed certificate")
    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(20)
        port = listener.getsockname()[1]

        def serve() -> None:
            raw, _ = listener.accept()
            with context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(20)
                received.extend(_read_frames(conn, 3))

        thread = threading.Thread(target=serve)
        thread.start()
        study = "1.2.826.0.1.3680043.2.998"
        forwarder = _send_three(engine, AuditSettings(syslog=f"tls://127.0.0.1:{port}", ca_file=cert_file), study)
        thread.join(30)
        forwarder.close()
    assert forwarder.sent == 3
    _check_messages(received, study)


def test_audit_config_errors_are_clear(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[audit]\nsyslog = "http://collector"\n')
    result = run_cli("audit", "verify", "--config", str(config), "--data", str(tmp_path / "d"), check=False)
    assert result.returncode == 2 and "udp://" in result.stderr and "Traceback" not in result.stderr
