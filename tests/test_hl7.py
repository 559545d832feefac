"""HL7 v2 ADT over MLLP: real messages sent over a TCP socket to a running
``samarkiv serve`` with ``hl7_port`` set (SQLite and PostgreSQL). Checks the
ACKs (MSA-1, MSA-2 echo, ERR, the message's delimiters and version) and the
master patient index afterwards: demographics, merges, links, unlinks, links
by personnummer; malformed messages get AE/AR and change nothing."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom

import pytest
from sqlalchemy import Engine, func, select

from conftest import ArchiveProcess, free_port, storescu, transfer_syntax_of
from samarkiv.hl7.demographics import hl7_demographics
from samarkiv.index.engine import create_index_engine
from samarkiv.index.identity_schema import identity_history, patient_identifiers, persons
from samarkiv.index.schema import patients

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
PNR_OID = "1.2.752.129.2.1.3.1"
TOLVAN = "191212121212"  # valid personnummer
TOLVAN_10 = "121212+1212"  # born 1912: "+" from age 100
BAD_PNR = "191212121213"  # wrong check digit

CONFIG = """
hl7_port = {port}
[[organisations]]
code = "KS"
name = "Karolinska"
issuer_of_patient_id = "KS"
aets = ["KSCT"]
[[organisations]]
code = "SU"
name = "Sahlgrenska"
issuer_ueid = "1.2.752.99.2"
"""


@dataclass
class Hl7Archive:
    server: ArchiveProcess
    port: int
    engine: Engine

    def exchange(self, data: bytes, conn: socket.socket | None = None) -> str:
        """Send raw bytes; the ACK block's content, decoded (Latin-1 keeps every byte)."""
        own = conn is None
        conn = conn or socket.create_connection(("127.0.0.1", self.port), timeout=30)
        try:
            conn.sendall(data)
            return read_block(conn).decode("latin-1")
        finally:
            if own:
                conn.close()

    def send(self, message: str, conn: socket.socket | None = None, encoding: str = "utf-8") -> str:
        return self.exchange(VT + message.replace("\n", "\r").encode(encoding) + FS + CR, conn)

    def person(self, identifier: str) -> dict:
        out = self.server.cli("patients", "show", identifier, "--json")
        return json.loads(out.stdout)

    def counts(self) -> tuple[int, ...]:
        with self.engine.connect() as conn:
            return tuple(
                conn.execute(select(func.count()).select_from(table)).scalar_one()
                for table in (persons, patient_identifiers, identity_history, hl7_demographics)
            )

    def demographics(self, value: str, issuer: str) -> tuple | None:
        d, pi = hl7_demographics, patient_identifiers
        with self.engine.connect() as conn:
            row = conn.execute(
                select(d.c.patient_name, d.c.birth_date, d.c.sex, d.c.source)
                .join(pi, pi.c.pk == d.c.identifier_pk)
                .where(pi.c.value == value, pi.c.issuer == issuer)
            ).first()
        return None if row is None else tuple(row)


def read_block(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(FS + CR):
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before a whole block: {data!r}"
        data += chunk
    assert data.startswith(VT), data
    return data[1:-2]


def ack_fields(ack: str) -> dict[str, list[str]]:
    """Segment ID -> fields (index n is field n; MSH as MSH-n)."""
    segments: dict[str, list[str]] = {}
    sep = ack[3]
    for segment in ack.split("\r"):
        if not segment:
            continue
        fields = segment.split(sep)
        if fields[0] == "MSH":
            fields = ["MSH", sep, *fields[1:]]
        segments.setdefault(fields[0], fields)
    return segments


def msg(event: str, control_id: str, *segments: str, version: str = "2.5", facility: str = "KS") -> str:
    structure = {"A01": "ADT_A01", "A04": "ADT_A01", "A08": "ADT_A01", "A40": "ADT_A39", "A24": "ADT_A24", "A37": "ADT_A37"}.get(event, "")
    msh = f"MSH|^~\\&|EPR|{facility}|SAMARKIV|REGION|20260501120000||ADT^{event}^{structure}|{control_id}|P|{version}"
    return "\r".join([msh, f"EVN|{event}|20260501120000", *segments]) + "\r"


def assert_ack(ack: str, code: str, control_id: str) -> dict[str, list[str]]:
    fields = ack_fields(ack)
    assert fields["MSA"][1] == code, ack
    assert fields["MSA"][2] == control_id, ack
    assert fields["MSH"][9].startswith("ACK"), ack
    return fields


@pytest.fixture
def hl7(make_archive) -> Iterator[Hl7Archive]:  # type: ignore[no-untyped-def]
    port = free_port()
    server = make_archive(CONFIG.format(port=port))
    engine = create_index_engine(server.index_url)
    yield Hl7Archive(server, port, engine)
    engine.dispose()


def identifiers(person: dict) -> set[str]:
    return {f"{i['value']}^{i['issuer']}" for i in person["identifiers"]}


# --- A01 / A04 / A08 --------------------------------------------------------------


def test_a01_records_demographics_and_a08_updates_them(hl7: Hl7Archive) -> None:
    ack = hl7.send(msg("A01", "ADM1", "PID|1||12345^^^KS^MR||Svensson^Anna^Maria||19800102|F", "PV1|1|I"))
    fields = assert_ack(ack, "AA", "ADM1")
    assert fields["MSH"][12] == "2.5" and fields["MSH"][9] == "ACK^A01^ACK"
    assert fields["MSH"][5:7] == ["EPR", "KS"]  # sending and receiving swapped
    assert "ERR" not in fields
    assert hl7.demographics("12345", "KS") == ("Svensson^Anna^Maria", "19800102", "F", "hl7:EPR^KS")
    person = hl7.person("12345^KS")
    assert identifiers(person) == {"12345^KS"}

    # A08: a new name; an empty birth date keeps it; "" deletes the sex.
    ack = hl7.send(msg("A08", "UPD1", 'PID|1||12345^^^KS^MR||Larsson^Anna|||""'))
    assert_ack(ack, "AA", "UPD1")
    assert hl7.demographics("12345", "KS") == ("Larsson^Anna", "19800102", None, "hl7:EPR^KS")
    # A04 for an identifier without assigning authority: the MSH-4 organisation's.
    ack = hl7.send(msg("A04", "REG1", "PID|1||4711||Berg^Olle||19700101|M", facility="SU"))
    assert_ack(ack, "AA", "REG1")
    assert hl7.demographics("4711", "1.2.752.99.2") == ("Berg^Olle", "19700101", "M", "hl7:EPR^SU")
    assert hl7.person("4711^SU")["person"] != person["person"]
    # A known identifier of another person in PID-3 is not moved: AA with a warning.
    fields = assert_ack(hl7.send(msg("A08", "UPD2", "PID|1||12345^^^KS~4711^^^SU||Larsson^Anna")), "AA", "UPD2")
    assert fields["ERR"][4] == "W" and fields["ERR"][2] == "PID^1^3^2"
    assert hl7.person("4711^SU")["person"] != person["person"]
    # A local identifier not seen before is put on the person, in the history.
    assert_ack(hl7.send(msg("A08", "UPD3", "PID|1||12345^^^KS~A-1^^^SU")), "AA", "UPD3")
    linked = hl7.person("A-1^SU")
    assert linked["person"] == person["person"]
    assert any(h["action"] == "link" and h["actor"] == "hl7:EPR^KS" for h in linked["history"])


def test_a08_updates_the_catalogue_rows_of_stored_studies(
    hl7: Hl7Archive, sendable_files: list[Path], tmp_path: Path
) -> None:
    source = next(f for f in sendable_files if transfer_syntax_of(f) in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"))
    ds = pydicom.dcmread(source)
    ds.PatientID, ds.PatientName = "12345", "Old^Name"
    for keyword in ("IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    path = tmp_path / "ks.dcm"
    ds.save_as(path)
    result = storescu(hl7.server, path, extra=("-aet", "KSCT"))
    assert result.returncode == 0, result.stderr

    def catalogue() -> tuple:
        with hl7.engine.connect() as conn:
            return tuple(conn.execute(
                select(patients.c.patient_name, patients.c.patient_name_norm, patients.c.patient_sex)
                .where(patients.c.patient_id == "12345", patients.c.issuer_of_patient_id == "KS")
            ).one())  # fmt: skip

    assert catalogue()[0] == "Old^Name"
    assert_ack(hl7.send(msg("A08", "CAT1", "PID|1||12345^^^KS^MR||Nygren^Nils||19500505|M")), "AA", "CAT1")
    assert catalogue() == ("Nygren^Nils", "NYGREN^NILS", "M")
    assert hl7.person("12345^KS")["studies"] == 1


def test_personnummer_in_pid3_links_to_the_person_holding_it(hl7: Hl7Archive) -> None:
    ack = hl7.send(msg("A01", "P1", f"PID|1||12345^^^KS^MR~{TOLVAN}^^^&{PNR_OID}&ISO^NNSWE||Tolvansson^Tolvan"))
    assert_ack(ack, "AA", "P1")
    holder = hl7.person(f"{TOLVAN}^se-personnummer")
    assert identifiers(holder) == {"12345^KS", f"{TOLVAN}^{PNR_OID}"}
    # Another hospital: its local ID and the number written another way,
    # known by its identifier type only (NNSWE, no assigning authority).
    ack = hl7.send(msg("A01", "P2", f"PID|1||555^^^SU^MR~{TOLVAN_10}^^^^NNSWE||Tolvansson^Tolvan", facility="SU"))
    assert_ack(ack, "AA", "P2")
    person = hl7.person("555^SU")
    assert person["person"] == holder["person"]
    assert "555^1.2.752.99.2" in identifiers(person)
    actors = {h["actor"] for h in person["history"]}
    assert "hl7:EPR^SU" in actors


def test_demographic_conflicts_across_organisations_are_listed_for_review(hl7: Hl7Archive) -> None:
    pnr = f"{TOLVAN}^^^&{PNR_OID}&ISO^NNSWE"
    assert_ack(hl7.send(msg("A01", "C1", f"PID|1||12345^^^KS^MR~{pnr}||Tolvansson^Tolvan||19121212|M")), "AA", "C1")
    # The same person at another hospital: another given name and birth date.
    sent = f"PID|1||555^^^SU^MR~{pnr}||TOLVANSSON^Tolvar||19121213|M"
    assert_ack(hl7.send(msg("A01", "C2", sent, facility="SU")), "AA", "C2")
    assert_ack(hl7.send(msg("A01", "C3", "PID|1||4711^^^SU^MR||Berg^Olle||19700101|M", facility="SU")), "AA", "C3")

    person = hl7.person("555^SU")
    shown = {(d["identifier"], d["source"]): (d["name"], d["birth_date"], d["sex"]) for d in person["demographics"]}
    assert shown[("12345^KS", "HL7 ADT^A01 from EPR^KS")] == ("Tolvansson^Tolvan", "19121212", "M")
    assert shown[("555^1.2.752.99.2", "HL7 ADT^A01 from EPR^SU")] == ("TOLVANSSON^Tolvar", "19121213", "M")
    assert {c["attribute"] for c in person["conflicts"]} == {"name", "birth date"}
    human = hl7.server.cli("patients", "show", "555^SU").stdout
    assert "demographics" in human and "Tolvar" in human and "disagree on the birth date" in human

    listed = json.loads(hl7.server.cli("patients", "conflicts", "--json").stdout)["conflicts"]
    by_attribute = {c["attribute"]: c for c in listed}
    assert set(by_attribute) == {"name", "birth date"}  # Berg^Olle has nothing to review; the family name
    assert {c["person"] for c in listed} == {person["person"]}  # differs only in case
    born = {(s["organisation"], s["source"], s["birth_date"]) for s in by_attribute["birth date"]["sources"]}
    assert ("SU", "HL7 ADT^A01 from EPR^SU", "19121213") in born
    assert (None, "national number", "19121212") in born  # the personnummer's date sides with KS
    assert "2 demographic conflicts" in hl7.server.cli("patients", "conflicts").stdout

    # SU corrects its record (both identifiers it sent): nothing left to review.
    fixed = f"PID|1||555^^^SU^MR~{pnr}||Tolvansson^Tolvan||19121212"
    assert_ack(hl7.send(msg("A08", "C4", fixed, facility="SU")), "AA", "C4")
    assert json.loads(hl7.server.cli("patients", "conflicts", "--json").stdout)["conflicts"] == []
    assert "no demographic conflicts" in hl7.server.cli("patients", "conflicts").stdout


# --- A40, A24, A37 --------------------------------------------------------------------


def test_a40_merges_two_persons(hl7: Hl7Archive) -> None:
    assert_ack(hl7.send(msg("A01", "M1", "PID|1||12345^^^KS^MR||Ek^Eva||19900303|F")), "AA", "M1")
    assert_ack(hl7.send(msg("A01", "M2", "PID|1||777^^^SU^MR||Ek^Eva||19900303|F")), "AA", "M2")
    kept, gone = hl7.person("12345^KS"), hl7.person("777^SU")
    assert kept["person"] != gone["person"]

    ack = hl7.send(msg("A40", "M3", "PID|1||12345^^^KS^MR||Ek^Eva", "MRG|777^^^SU^MR"))
    assert_ack(ack, "AA", "M3")
    merged = hl7.person("777^SU")
    assert merged["person"] == kept["person"]
    assert identifiers(merged) == {"12345^KS", "777^1.2.752.99.2"}
    assert gone["person"] in merged["merged_from"]
    merges = [h for h in merged["history"] if h["action"] == "merge"]
    assert merges and merges[0]["actor"] == "hl7:EPR^KS" and "M3" in merges[0]["reason"]
    # The merge is reversible by hand, as every merge.
    hl7.server.cli("patients", "unmerge", "777^SU")
    assert hl7.person("777^SU")["person"] == gone["person"]


def test_a24_links_and_a37_unlinks(hl7: Hl7Archive) -> None:
    ack = hl7.send(msg("A24", "L1", "PID|1||12345^^^KS^MR||Ek^Eva", "PID|2||888^^^SU^MR||Ek^Eva"))
    assert_ack(ack, "AA", "L1")
    assert hl7.person("888^SU")["person"] == hl7.person("12345^KS")["person"]
    links = [h for h in hl7.person("888^SU")["history"] if h["action"] == "link"]
    assert links and links[-1]["actor"] == "hl7:EPR^KS"

    ack = hl7.send(msg("A37", "L2", "PID|1||12345^^^KS^MR", "PID|2||888^^^SU^MR"))
    assert_ack(ack, "AA", "L2")
    separate = hl7.person("888^SU")
    assert separate["person"] != hl7.person("12345^KS")["person"]
    assert any(h["action"] == "unlink" and h["actor"] == "hl7:EPR^KS" for h in separate["history"])


# --- refusals -----------------------------------------------------------------------

MALFORMED = {
    "garbage": (VT + b"this is not HL7 at all" + FS + CR, "AR", ""),
    "no PID": (VT + msg("A01", "X1").encode() + FS + CR, "AE", "X1"),
    "unknown event": (VT + msg("A99", "X2", "PID|1||1^^^KS").encode() + FS + CR, "AR", "X2"),
    "not ADT": (
        VT + msg("A01", "X3", "PID|1||1^^^KS").replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01").encode() + FS + CR,
        "AR", "X3",
    ),
    "invalid personnummer": (VT + msg("A01", "X4", f"PID|1||9^^^KS~{BAD_PNR}^^^&{PNR_OID}&ISO").encode() + FS + CR, "AE", "X4"),
    "unknown MRG identifier": (VT + msg("A40", "X5", "PID|1||1^^^KS", "MRG|404^^^KS").encode() + FS + CR, "AE", "X5"),
    "second PID invalid (rolled back)": (
        VT + msg("A24", "X6", "PID|1||NEW1^^^KS", f"PID|2||{BAD_PNR}^^^&{PNR_OID}&ISO").encode() + FS + CR,
        "AE", "X6",
    ),
    "bad birth date": (VT + msg("A01", "X7", "PID|1||NEW2^^^KS||A^B||19801340").encode() + FS + CR, "AE", "X7"),
    "unsupported version": (VT + msg("A01", "X8", "PID|1||NEW3^^^KS", version="9.9").encode() + FS + CR, "AR", "X8"),
    "no start block": (msg("A01", "X9", "PID|1||NEW4^^^KS").encode() + FS + CR, "AR", "X9"),
    "FS without CR": (VT + msg("A01", "X10", "PID|1||NEW5^^^KS").encode() + FS + b"\n", "AR", "X10"),
}


def test_malformed_messages_get_a_nak_and_change_nothing(hl7: Hl7Archive) -> None:
    assert_ack(hl7.send(msg("A01", "OK0", "PID|1||1^^^KS||Ek^Eva")), "AA", "OK0")
    before = hl7.counts()
    with socket.create_connection(("127.0.0.1", hl7.port), timeout=30) as conn:
        for name, (data, code, control_id) in MALFORMED.items():
            ack = hl7.exchange(data, conn)
            fields = assert_ack(ack, code, control_id)
            assert "ERR" in fields, (name, ack)
            assert fields["ERR"][3].split("^")[2] == "HL70357", (name, ack)
            assert fields["ERR"][4] == "E", (name, ack)
            assert hl7.counts() == before, name
        # the connection still works after every refusal
        assert_ack(hl7.send(msg("A08", "OK1", "PID|1||1^^^KS||Ek^Eva"), conn), "AA", "OK1")
        # a block cut short by the next one's start: refused; the next one is taken
        cut = msg("A01", "X11", "PID|1||NEW6^^^KS").encode()
        conn.sendall(VT + cut + VT + msg("A08", "OK2", "PID|1||1^^^KS||Ek^Eva").encode() + FS + CR)
        assert_ack(read_block(conn).decode("latin-1"), "AR", "X11")
        assert_ack(read_block(conn).decode("latin-1"), "AA", "OK2")
    codes = {n: ack_fields(hl7.exchange(d))["ERR"][3].split("^")[0] for n, (d, _, _) in MALFORMED.items() if n in (
        "unknown event", "not ADT", "unknown MRG identifier", "invalid personnummer", "unsupported version", "no PID"
    )}  # fmt: skip
    assert codes == {
        "unknown event": "201", "not ADT": "200", "unknown MRG identifier": "204",
        "invalid personnummer": "102", "unsupported version": "203", "no PID": "100",
    }  # fmt: skip
    assert hl7.counts()[:3] == before[:3]
    with hl7.engine.connect() as c:
        assert c.execute(select(patient_identifiers.c.pk).where(patient_identifiers.c.value.like("NEW%"))).first() is None


def test_oversized_message_is_refused_and_the_connection_closed(hl7: Hl7Archive) -> None:
    before = hl7.counts()
    big = msg("A01", "BIG", "PID|1||1^^^KS||" + "A" * (1 << 20)).encode()
    with socket.create_connection(("127.0.0.1", hl7.port), timeout=30) as conn:
        try:
            conn.sendall(VT + big + FS + CR)
        except OSError:
            pass  # the server may close before reading it all
        ack = read_block(conn).decode("latin-1")
        assert ack_fields(ack)["MSA"][1] == "AR"
        assert conn.recv(1) == b""  # closed
    assert hl7.counts() == before
    # SIGTERM stops the listener with the other doors, even with an idle connection open.
    with socket.create_connection(("127.0.0.1", hl7.port), timeout=30):
        assert hl7.server.stop() == 0
    assert "HL7 v2 (MLLP) listener stopped" in hl7.server.log.read_text()


# --- the ACK's form ------------------------------------------------------------------


def test_ack_uses_the_messages_delimiters_version_and_charset(hl7: Hl7Archive) -> None:
    message = (
        "MSH#$*@%#EPR#KS#SAMARKIV#REGION#20260501120000##ADT$A08#D-42#P#2.3######8859/1\r"
        "EVN#A08#20260501120000\r"
        "PID#1##2024$$$KS##Åström$Åsa##19600606#F\r"
    )
    ack = hl7.exchange(VT + message.encode("latin-1") + FS + CR)
    assert ack.startswith("MSH#$*@%#SAMARKIV#")
    fields = ack_fields(ack)
    assert fields["MSH"][12] == "2.3" and fields["MSH"][9] == "ACK$A08" and fields["MSH"][18] == "8859/1"
    assert fields["MSA"][1:3] == ["AA", "D-42"]
    assert hl7.demographics("2024", "KS")[:3] == ("Åström^Åsa", "19600606", "F")

    # A v2.3 refusal: ERR-1 (ELD) and MSA-3 text, in the same delimiters.
    nak = hl7.exchange(VT + message.replace("ADT$A08", "ADT$A99").replace("D-42", "D-43").encode("latin-1") + FS + CR)
    fields = ack_fields(nak)
    assert fields["MSA"][1:3] == ["AR", "D-43"] and fields["MSA"][3]
    assert fields["ERR"][1].split("$")[3].split("%")[0] == "201"
