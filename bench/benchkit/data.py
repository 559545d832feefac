"""Benchmark data: small CT files to send, and large catalogues filled directly.

The catalogue used by the C-FIND benchmark is one logical data set
(:class:`Catalogue`), written either into samarkiv's schema (SQLAlchemy Core
executemany, after the Alembic migrations) or into Orthanc's own SQLite index
(rows modelled on what Orthanc itself wrote for a real stored file).
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import PYDICOM_ROOT_UID

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def run_root() -> str:
    """A UID root unique to this run: pydicom's root and a random number."""
    return f"{PYDICOM_ROOT_UID}{random.SystemRandom().randrange(10**9, 10**10)}"


# --- files to send ------------------------------------------------------------------


@dataclass
class FileSet:
    """Part 10 files written for one measurement."""

    files: list[Path]
    studies: list[str]  # Study Instance UIDs, in order
    patients: dict[str, list[str]]  # Patient ID -> its Study Instance UIDs
    total_bytes: int


def make_files(
    out: Path,
    *,
    label: str,
    studies: int,
    per_study: int,
    series_per_study: int = 1,
    studies_per_patient: int = 1,
    matrix: int | None = None,
) -> FileSet:
    """Copies of CT_small.dcm with fresh Study/Series/SOP Instance UIDs.

    Patient IDs are ``<label>-<n>``; files are in send order (study by study).
    ``matrix``: rows and columns of the image (CT_small's 128x128 tiled), e.g. 512 for the
    size of a clinical CT slice (about 0.5 MB) instead of 39 KB.
    """
    out.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(CT_SMALL)
    if matrix is not None and matrix != ds.Rows:
        import numpy as np

        tiles = -(-matrix // ds.Rows)
        ds.PixelData = np.tile(ds.pixel_array, (tiles, tiles))[:matrix, :matrix].tobytes()
        ds.Rows = ds.Columns = matrix
    root = run_root()
    files: list[Path] = []
    study_uids: list[str] = []
    patients: dict[str, list[str]] = {}
    total = 0
    for s in range(studies):
        patient = f"{label}-{s // studies_per_patient:05d}"
        study_uid = f"{root}.1.{s}"
        study_uids.append(study_uid)
        patients.setdefault(patient, []).append(study_uid)
        ds.PatientID = patient
        ds.PatientName = f"BENCH^{label}^{s // studies_per_patient}"
        ds.StudyInstanceUID = study_uid
        ds.AccessionNumber = f"A{s:07d}"
        ds.StudyID = str(s)
        for i in range(per_study):
            series = i * series_per_study // per_study
            ds.SeriesInstanceUID = f"{root}.2.{s}.{series}"
            ds.SeriesNumber = series + 1
            sop_uid = f"{root}.3.{s}.{i}"
            ds.SOPInstanceUID = sop_uid
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.InstanceNumber = i + 1
            path = out / f"{s:04d}-{i:05d}.dcm"
            ds.save_as(path)
            total += path.stat().st_size
            files.append(path)
    return FileSet(files, study_uids, patients, total)


# --- one logical catalogue ------------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    """``patients`` patients, ``studies`` studies (spread evenly over the
    patients), one or two series per study, ``per_study`` instances per study."""

    patients: int
    studies: int
    per_study: int = 10
    root: str = ""
    patient_prefix: str = "FILL"

    def patient_id(self, p: int) -> str:
        return f"{self.patient_prefix}{p:07d}"

    # A region: every person has a local ID at three organisations (patients
    # 3q, 3q+1, 3q+2 are person q) and one personnummer.

    def issuer(self, p: int) -> str:
        return REGION_ISSUERS[p % len(REGION_ISSUERS)]

    def person_of(self, p: int) -> int:
        return p // len(REGION_ISSUERS)

    @property
    def persons(self) -> int:
        return -(-self.patients // len(REGION_ISSUERS))

    def personnummer(self, q: int) -> str:
        """A valid twelve-digit personnummer, unique per person."""
        from samarkiv.identity.national import luhn_check_digit

        born = date(1940, 1, 1) + timedelta(days=q % 20000)
        serial = f"{q // 20000 + 1:03d}"
        return f"{born:%Y%m%d}{serial}{luhn_check_digit(f'{born:%y%m%d}{serial}')}"

    def national_study_counts(self) -> dict[str, int]:
        """personnummer -> studies of the person at all organisations."""
        counts: dict[str, int] = {}
        for p in range(self.patients):
            pnr = self.personnummer(self.person_of(p))
            counts[pnr] = counts.get(pnr, 0) + len(self.studies_of(p))
        return counts

    def patient_of(self, s: int) -> int:
        return s % self.patients

    def studies_of(self, p: int) -> list[int]:
        return list(range(p, self.studies, self.patients))

    def series_count(self, s: int) -> int:
        return 1 + s % 2

    def study_uid(self, s: int) -> str:
        return f"{self.root}.1.{s}"

    def series_uid(self, s: int, k: int) -> str:
        return f"{self.root}.2.{s}.{k}"

    def sop_uid(self, s: int, i: int) -> str:
        return f"{self.root}.3.{s}.{i}"

    def study_date(self, s: int) -> str:
        return (date(2005, 1, 1) + timedelta(days=(s * 37) % 7000)).strftime("%Y%m%d")

    @property
    def instances(self) -> int:
        return self.studies * self.per_study

    @property
    def series(self) -> int:
        return sum(self.series_count(s) for s in range(self.studies))

    def walk(self) -> Iterator[tuple[int, int, list[tuple[int, list[int]]]]]:
        """(study, patient, [(series k, [instance i, ...]), ...]) for every study."""
        for s in range(self.studies):
            n = self.series_count(s)
            groups = [(k, [i for i in range(self.per_study) if i % n == k]) for k in range(n)]
            yield s, self.patient_of(s), groups


REGION_ISSUERS = ("KS", "SU", "RAD")
PERSONNUMMER_OID = "1.2.752.129.2.1.3.1"


def new_catalogue(patients: int, studies: int, per_study: int = 10) -> Catalogue:
    return Catalogue(patients, studies, per_study, root=run_root())


# --- samarkiv's schema ------------------------------------------------------------------


def sample_header_blob() -> bytes:
    """What samarkiv keeps in instances.metadata for a CT_small-sized object."""
    from samarkiv.core.ingest import parse_instance

    parsed = parse_instance(CT_SMALL)
    return zlib.compress(parsed.header, 1) if parsed.header else b""


def fill_samarkiv(url: str, cat: Catalogue, *, metadata: bool = True, batch: int = 20000, log=print, owners: bool | str = False) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Migrate the index at ``url`` and bulk-insert ``cat`` into it.

    ``owners``: set each instance's ``org_pk`` to its patient's organisation
    (KS, SU, RAD: the issuer of its Patient ID), as the store path does.

    blob_key, sha256 and size are synthetic (no files behind them); metadata,
    when asked for, is the real compressed header of CT_small for every row,
    so that tables have their real width.
    """
    from sqlalchemy import insert, text

    from samarkiv.index.engine import create_index_engine, migrate
    from samarkiv.index.schema import instances, patients, series, studies

    started = time.perf_counter()
    is_sqlite = url.startswith("sqlite")
    writer = create_index_engine(url, writer=True) if is_sqlite else create_index_engine(url)
    migrate(writer)
    writer.dispose()
    engine = create_index_engine(url)
    now = datetime.now(UTC)
    blob = sample_header_blob() if metadata else None
    counts = {"patients": 0, "studies": 0, "series": 0, "instances": 0}

    with engine.connect() as conn:
        if is_sqlite:
            conn.exec_driver_sql("PRAGMA synchronous=OFF")
            conn.commit()

        def flush(table, rows: list[dict[str, Any]], name: str) -> None:  # type: ignore[no-untyped-def]
            if rows:
                conn.execute(insert(table), rows)
                counts[name] += len(rows)
                rows.clear()

        rows: list[dict[str, Any]] = []
        for p in range(cat.patients):
            pid = cat.patient_id(p)
            name = f"FILL^PATIENT^{p}"
            rows.append(
                {
                    "pk": p + 1, "patient_id": pid, "issuer_of_patient_id": cat.issuer(p), "patient_name": name,
                    "patient_name_norm": name.upper(), "patient_birth_date": f"19{40 + p % 60:02d}0101",
                    "patient_sex": "MF"[p % 2], "created_at": now, "updated_at": now,
                }  # fmt: skip
            )
            if len(rows) >= batch:
                flush(patients, rows, "patients")
        flush(patients, rows, "patients")
        _fill_identities(conn, cat, now, batch)
        conn.commit()

        study_rows: list[dict[str, Any]] = []
        series_rows: list[dict[str, Any]] = []
        instance_rows: list[dict[str, Any]] = []
        series_pk = instance_pk = flushes = 0
        for s, p, groups in cat.walk():
            sdate = cat.study_date(s)
            study_rows.append(
                {
                    "pk": s + 1, "patient_pk": p + 1, "study_instance_uid": cat.study_uid(s),
                    "study_date": sdate, "study_time": "101500", "accession_number": f"ACC{s:08d}",
                    "study_id": str(s % 100000), "study_description": "CT CHEST",
                    "referring_physician_name": "REFERRER^DOCTOR", "referring_physician_name_norm": "REFERRER^DOCTOR",
                    "created_at": now, "updated_at": now,
                }  # fmt: skip
            )
            for k, members in groups:
                series_pk += 1
                series_rows.append(
                    {
                        "pk": series_pk, "study_pk": s + 1, "series_instance_uid": cat.series_uid(s, k),
                        "modality": "CT" if k == 0 else "SR", "series_number": k + 1,
                        "series_description": "AXIAL" if k == 0 else "REPORT", "series_date": sdate,
                        "series_time": "101600", "body_part_examined": "CHEST", "station_name": "CT01",
                        "institution_name": "BENCH HOSPITAL", "created_at": now,
                    }  # fmt: skip
                )
                for i in members:
                    instance_pk += 1
                    instance_rows.append(
                        {
                            "pk": instance_pk, "series_pk": series_pk, "sop_instance_uid": cat.sop_uid(s, i),
                            "sop_class_uid": CT_IMAGE_STORAGE, "instance_number": i + 1,
                            "content_date": sdate, "content_time": "101700", "number_of_frames": None,
                            "rows": 128, "columns": 128, "transfer_syntax_uid": EXPLICIT_VR_LE,
                            "blob_key": f"bench/{instance_pk:09d}.dcm", "size": 39138,
                            "sha256": f"{instance_pk:064x}", "source_aet": "FILL", "stored_at": now,
                            "metadata": blob, "org_pk": _owner_pk(owners, p),
                        }  # fmt: skip
                    )
            if len(instance_rows) >= batch:
                flush(studies, study_rows, "studies")
                flush(series, series_rows, "series")
                flush(instances, instance_rows, "instances")
                conn.commit()
                flushes += 1
                if flushes % 10 == 0:
                    log(f"    filled {counts['instances']:,}/{cat.instances:,} instances")
        flush(studies, study_rows, "studies")
        flush(series, series_rows, "series")
        flush(instances, instance_rows, "instances")
        conn.commit()

        if is_sqlite:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.commit()
        else:
            for table in ("patients", "studies", "series", "instances", "organisations", "persons", "patient_identifiers"):
                conn.execute(
                    text(f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), (SELECT max(pk) FROM {table}))")
                )
            conn.commit()
    engine.dispose()
    if not is_sqlite:
        # What autovacuum would have done by the time anyone queries.
        import psycopg

        from samarkiv.index.engine import normalise_url

        with psycopg.connect(normalise_url(url).replace("postgresql+psycopg", "postgresql"), autocommit=True) as pg:
            pg.execute("VACUUM ANALYZE")
    counts["seconds"] = round(time.perf_counter() - started, 1)
    return counts


DEFAULT_ORG_PK = len(REGION_ISSUERS) + 1  # the embedded default organisation, made by the fill


def _owner_pk(owners: bool | str, p: int) -> int | None:
    """instances.org_pk of patient ``p``'s objects: its organisation (owners=True),
    the default organisation (owners="default": what any unknown AE acts for), or none."""
    if owners == "default":
        return DEFAULT_ORG_PK
    return p % len(REGION_ISSUERS) + 1 if owners else None


def _fill_identities(conn: Any, cat: Catalogue, now: datetime, batch: int) -> None:
    """The master patient index of the region: three organisations, a person
    per three local IDs, and each person's personnummer (identity_schema.py)."""
    from sqlalchemy import insert

    from samarkiv.index.identity_schema import organisations, patient_identifiers, persons

    conn.execute(insert(organisations), [
        {"pk": n + 1, "code": code, "name": f"Hospital {code}", "kind": "hospital", "issuer_of_patient_id": code,
         "source": "cli", "created_at": now, "updated_at": now}
        for n, code in enumerate(REGION_ISSUERS)
    ] + [{"pk": DEFAULT_ORG_PK, "code": "default", "name": "Default organisation", "kind": "hospital",
          "issuer_of_patient_id": None, "source": "default", "created_at": now, "updated_at": now}])  # fmt: skip
    people: list[dict[str, Any]] = []
    identifiers: list[dict[str, Any]] = []
    for q in range(cat.persons):
        pnr = cat.personnummer(q)
        people.append({"pk": q + 1, "birth_date": pnr[:8], "sex": "MF"[int(pnr[10]) % 2 == 0], "created_at": now})
        identifiers.append(
            {"value": pnr, "issuer": PERSONNUMMER_OID, "person_pk": q + 1, "organisation_pk": None,
             "national_kind": "se-personnummer", "national_normalised": pnr, "national_valid": True, "created_at": now}
        )  # fmt: skip
        for p in range(3 * q, min(3 * q + 3, cat.patients)):
            identifiers.append(
                {"value": cat.patient_id(p), "issuer": cat.issuer(p), "person_pk": q + 1,
                 "organisation_pk": p % len(REGION_ISSUERS) + 1, "national_kind": None,
                 "national_normalised": None, "national_valid": None, "created_at": now}
            )  # fmt: skip
        if len(identifiers) >= batch:
            conn.execute(insert(persons), people)
            conn.execute(insert(patient_identifiers), identifiers)
            people.clear()
            identifiers.clear()
    if people:
        conn.execute(insert(persons), people)
        conn.execute(insert(patient_identifiers), identifiers)


# --- PostgreSQL scratch databases ----------------------------------------------------------


PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def create_pg_database(admin_url: str = PG_ADMIN_URL) -> str:
    import psycopg

    name = f"samarkiv_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


def drop_pg_database(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_version(admin_url: str = PG_ADMIN_URL) -> str:
    import psycopg

    with psycopg.connect(admin_url, connect_timeout=5) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]


# --- Orthanc's SQLite index --------------------------------------------------------------------

# Orthanc's resource types and the DICOM tags that name a resource at each level.
PATIENT, STUDY, SERIES, INSTANCE = 1, 2, 3, 4
PATIENT_ID = (0x0010, 0x0020)
PATIENT_NAME = (0x0010, 0x0010)
STUDY_UID = (0x0020, 0x000D)
SERIES_UID = (0x0020, 0x000E)
SOP_UID = (0x0008, 0x0018)
ACCESSION = (0x0008, 0x0050)
STUDY_DATE = (0x0008, 0x0020)
STUDY_ID = (0x0020, 0x0010)
SERIES_NUMBER = (0x0020, 0x0011)
INSTANCE_NUMBER = (0x0020, 0x0013)
META_INDEX_IN_SERIES = 1


def orthanc_public_id(*parts: str) -> str:
    """Orthanc's resource identifier: SHA-1 of the identifying UIDs, dashed."""
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


@dataclass
class _LevelTemplate:
    main: list[tuple[int, int, str]]
    identifiers: list[tuple[int, int, str]]
    metadata: list[tuple[int, str]]
    attachments: list[tuple[Any, ...]]  # (fileType, uuid, csize, usize, ctype, umd5, cmd5)


def _template(db: sqlite3.Connection, internal_id: int) -> _LevelTemplate:
    q = db.execute
    return _LevelTemplate(
        main=q("SELECT tagGroup, tagElement, value FROM MainDicomTags WHERE id=?", (internal_id,)).fetchall(),
        identifiers=q("SELECT tagGroup, tagElement, value FROM DicomIdentifiers WHERE id=?", (internal_id,)).fetchall(),
        metadata=q("SELECT type, value FROM Metadata WHERE id=?", (internal_id,)).fetchall(),
        attachments=q(
            "SELECT fileType, uuid, compressedSize, uncompressedSize, compressionType, uncompressedMD5, compressedMD5"
            " FROM AttachedFiles WHERE id=?",
            (internal_id,),
        ).fetchall(),
    )


def fill_orthanc_index(index: Path, cat: Catalogue, *, log=print, share_template_file: bool = False) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Add ``cat`` to the SQLite index of a stopped Orthanc that stored at least one file.

    The rows of one real stored instance (and its series, study, patient) are
    the template: every synthetic resource gets the same tags, metadata and
    attachment rows, with its own identifiers, names, numbers and public IDs.
    The attachments name files that do not exist, so only queries that Orthanc
    answers from its index (StorageAccessOnFind=Never, or no match) work on
    the synthetic resources. With ``share_template_file``, every synthetic
    attachment names the template instance's own file instead, so that code
    which reads a file per match (Orthanc's DICOMweb plugin) finds one.
    """
    started = time.perf_counter()
    db = sqlite3.connect(index, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1000000")
    row = db.execute("SELECT internalId, parentId FROM Resources WHERE resourceType=? LIMIT 1", (INSTANCE,)).fetchone()
    if row is None:
        raise RuntimeError("Orthanc's index has no instance to copy rows from")
    instance_id, series_id = row
    study_id = db.execute("SELECT parentId FROM Resources WHERE internalId=?", (series_id,)).fetchone()[0]
    patient_id = db.execute("SELECT parentId FROM Resources WHERE internalId=?", (study_id,)).fetchone()[0]
    tpl = {level: _template(db, rid) for level, rid in
           ((PATIENT, patient_id), (STUDY, study_id), (SERIES, series_id), (INSTANCE, instance_id))}  # fmt: skip
    next_id = db.execute("SELECT max(internalId) FROM Resources").fetchone()[0] + 1

    resources: list[tuple[Any, ...]] = []
    main: list[tuple[Any, ...]] = []
    idents: list[tuple[Any, ...]] = []
    meta: list[tuple[Any, ...]] = []
    files: list[tuple[Any, ...]] = []

    def flush() -> None:
        db.executemany("INSERT INTO Resources(internalId, resourceType, publicId, parentId) VALUES (?,?,?,?)", resources)
        db.executemany("INSERT INTO MainDicomTags VALUES (?,?,?,?)", main)
        db.executemany("INSERT INTO DicomIdentifiers VALUES (?,?,?,?)", idents)
        db.executemany("INSERT INTO Metadata VALUES (?,?,?)", meta)
        db.executemany("INSERT INTO AttachedFiles VALUES (?,?,?,?,?,?,?,?)", files)
        for rows in (resources, main, idents, meta, files):
            rows.clear()

    def add(level: int, rid: int, subst: dict[tuple[int, int], str], meta_subst: dict[int, str] | None = None) -> None:
        t = tpl[level]
        for g, e, v in t.main:
            main.append((rid, g, e, subst.get((g, e), v)))
        for g, e, v in t.identifiers:
            value = subst.get((g, e))
            # Orthanc keeps names (and other non-UID identifiers) upper-cased here.
            idents.append((rid, g, e, v if value is None else (value.upper() if (g, e) == PATIENT_NAME else value)))
        for kind, v in t.metadata:
            meta.append((rid, kind, (meta_subst or {}).get(kind, v)))
        for a in t.attachments:
            if share_template_file:
                files.append((rid, *a))
                continue
            md5 = hashlib.md5(str(rid).encode()).hexdigest()
            files.append((rid, a[0], str(uuid.UUID(int=random.getrandbits(128), version=4)), a[2], a[3], a[4], md5, md5))

    db.execute("BEGIN")
    patient_rid: dict[int, int] = {}
    for p in range(cat.patients):
        rid = next_id
        next_id += 1
        patient_rid[p] = rid
        pid = cat.patient_id(p)
        resources.append((rid, PATIENT, orthanc_public_id(pid), None))
        add(PATIENT, rid, {PATIENT_ID: pid, PATIENT_NAME: f"FILL^PATIENT^{p}"})
    flush()
    done = flushes = 0
    for s, p, groups in cat.walk():
        pid = cat.patient_id(p)
        st_uid = cat.study_uid(s)
        study_rid = next_id
        next_id += 1
        resources.append((study_rid, STUDY, orthanc_public_id(pid, st_uid), patient_rid[p]))
        add(STUDY, study_rid, {PATIENT_ID: pid, PATIENT_NAME: f"FILL^PATIENT^{p}", STUDY_UID: st_uid,
                               ACCESSION: f"ACC{s:08d}", STUDY_DATE: cat.study_date(s), STUDY_ID: str(s % 100000)})  # fmt: skip
        for k, members in groups:
            se_uid = cat.series_uid(s, k)
            series_rid = next_id
            next_id += 1
            resources.append((series_rid, SERIES, orthanc_public_id(pid, st_uid, se_uid), study_rid))
            add(SERIES, series_rid, {SERIES_UID: se_uid, SERIES_NUMBER: str(k + 1)})
            for i in members:
                sop = cat.sop_uid(s, i)
                rid = next_id
                next_id += 1
                resources.append((rid, INSTANCE, orthanc_public_id(pid, st_uid, se_uid, sop), series_rid))
                add(INSTANCE, rid, {SOP_UID: sop, INSTANCE_NUMBER: str(i + 1)}, {META_INDEX_IN_SERIES: str(i + 1)})
                done += 1
        if len(resources) >= 50000:
            flush()
            flushes += 1
            if flushes % 5 == 0:
                log(f"    filled {done:,}/{cat.instances:,} Orthanc instances")
    flush()
    db.execute("COMMIT")
    # No ANALYZE: Orthanc runs none itself (and samarkiv's SQLite index gets none either).
    db.close()
    return {"patients": cat.patients, "studies": cat.studies, "series": cat.series, "instances": cat.instances,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
