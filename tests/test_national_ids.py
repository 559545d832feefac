"""National identity numbers: Swedish personnummer and samordningsnummer,
Norwegian fødselsnummer, D- and H-nummer, Danish CPR; issuer OIDs; the
identifiers a DICOM dataset carries.

Valid numbers are built here with their check digits computed independently
of samarkiv (Luhn for Sweden, the two modulus 11 digits for Norway), in the
shapes the national test persons use.
"""

from __future__ import annotations

from datetime import date

import pytest
from pydicom.dataset import Dataset

from samarkiv.identity.national import (
    NATIONAL_ISSUERS,
    Issuer,
    NationalKind,
    identifiers_in_dataset,
    national_kind_of_issuer,
    parse_danish,
    parse_national,
    parse_norwegian,
    parse_swedish,
)

TODAY = date(2026, 5, 1)
SE_PNR, SE_SNR = "1.2.752.129.2.1.3.1", "1.2.752.129.2.1.3.3"
NO_FNR, NO_DNR, NO_HNR = "2.16.578.1.12.4.1.4.1", "2.16.578.1.12.4.1.4.2", "2.16.578.1.12.4.1.4.3"
DK_CPR = "1.2.208.176.1.2"


def luhn(nine: str) -> str:
    """Skatteverket's rule: digits times 2,1,2,...; digit sum; 10 minus the last digit."""
    digits = "".join(str(int(d) * w) for d, w in zip(nine, [2, 1] * 5))
    return str((10 - sum(map(int, digits)) % 10) % 10)


def swedish(yymmdd: str, birth_number: str) -> str:
    return yymmdd + birth_number + luhn(yymmdd + birth_number)


def mod11(digits: str, weights: list[int]) -> int:
    rest = sum(int(d) * w for d, w in zip(digits, weights)) % 11
    return 0 if rest == 0 else 11 - rest


def norwegian(ddmmyy: str, individual: str) -> str:
    """An 11-digit number with valid K1 K2 (the caller picks an individual
    number whose check digits are not 10)."""
    nine = ddmmyy + individual
    k1 = mod11(nine, [3, 7, 6, 1, 8, 9, 4, 5, 2])
    k2 = mod11(nine + str(k1), [5, 4, 3, 2, 7, 6, 5, 4, 3, 2])
    assert k1 < 10 and k2 < 10, "pick another individual number"
    return f"{nine}{k1}{k2}"


def first_norwegian(ddmmyy: str, individuals: range) -> str:
    for i in individuals:
        nine = ddmmyy + f"{i:03d}"
        k1 = mod11(nine, [3, 7, 6, 1, 8, 9, 4, 5, 2])
        if k1 < 10 and mod11(nine + str(k1), [5, 4, 3, 2, 7, 6, 5, 4, 3, 2]) < 10:
            return norwegian(ddmmyy, f"{i:03d}")
    raise AssertionError("no individual number fits")


# --- Sweden ---------------------------------------------------------------------


def test_skatteverket_example_personnummer_in_every_written_form():
    # SKV 704's worked example: 640823-323 with check digit 4.
    assert swedish("640823", "323") == "6408233234"
    for written in ("640823-3234", "6408233234", "196408233234", "19640823-3234", " 640823-3234 "):
        parsed = parse_swedish(written, TODAY)
        assert parsed.valid, (written, parsed.reason)
        assert parsed.kind is NationalKind.SE_PERSONNUMMER
        assert parsed.normalised == "196408233234"
        assert parsed.birth_date == date(1964, 8, 23)
        assert parsed.sex == "M"  # 3, odd


def test_plus_separator_means_a_hundred_or_older():
    # Tolvan Tolvansson, Skatteverket's long-standing test person, born 1912.
    assert parse_swedish("121212+1212", TODAY).normalised == "191212121212"
    assert parse_swedish("121212-1212", TODAY).normalised == "201212121212"
    assert parse_swedish("19121212-1212", TODAY).birth_date == date(1912, 12, 12)
    assert parse_swedish("640823+3234", TODAY).birth_date == date(1864, 8, 23)
    # A ten-digit number with '-' takes the latest matching year this century allows.
    assert parse_swedish(swedish("260101", "002"), TODAY).birth_date == date(2026, 1, 1)
    assert parse_swedish(swedish("270101", "002"), TODAY).birth_date == date(1927, 1, 1)


def test_samordningsnummer_day_plus_sixty():
    # SKV 707's example: a man born 3 October 1970, individual number 239.
    parsed = parse_swedish("701063-2391", TODAY)
    assert parsed.valid and parsed.kind is NationalKind.SE_SAMORDNINGSNUMMER
    assert parsed.birth_date == date(1970, 10, 3) and parsed.sex == "M"
    assert parsed.normalised == "197010632391"
    assert not parse_swedish(swedish("701092", "239"), TODAY).valid  # day 32
    woman = parse_swedish("19" + swedish("850261", "244"), TODAY)
    assert woman.valid and woman.sex == "F" and woman.birth_date == date(1985, 2, 1)


@pytest.mark.parametrize(
    "number, reason",
    [
        ("640823-3235", "check digit"),
        ("6408233230", "check digit"),
        (swedish("640230", "323"), "no such date"),  # 30 February
        (swedish("010229", "123"), "no such date"),  # 2001 is no leap year
        (swedish("641323", "323"), "no such date"),  # month 13
        (swedish("640800", "323"), "no such date"),  # day 0
        (swedish("640823", "000"), "000"),
        (swedish("260601", "002"), "future"),  # after TODAY in 2026
        ("64082332341", "digits"),
        ("640823/3234", "digits"),
        ("", "digits"),
    ],
)
def test_invalid_swedish_numbers_say_why(number: str, reason: str):
    parsed = parse_swedish(number, TODAY)
    assert not parsed.valid
    assert reason in parsed.reason
    assert parsed.normalised is None


def test_leap_day():
    assert parse_swedish(swedish("000229", "123"), TODAY).birth_date == date(2000, 2, 29)


# --- Norway ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "ddmmyy, individuals, born",
    [
        ("010190", range(0, 500), date(1990, 1, 1)),
        ("150805", range(500, 1000), date(2005, 8, 15)),
        ("311260", range(500, 750), date(1860, 12, 31)),
        ("290245", range(900, 1000), None),  # 1945 is no leap year
        ("020345", range(900, 1000), date(1945, 3, 2)),
        ("290200", range(500, 1000), date(2000, 2, 29)),
    ],
)
def test_fodselsnummer_century_from_the_individual_number(ddmmyy: str, individuals: range, born: date | None):
    number = first_norwegian(ddmmyy, individuals)
    parsed = parse_norwegian(number)
    assert parsed.kind is NationalKind.NO_FODSELSNUMMER
    assert parsed.valid is (born is not None), parsed.reason
    assert parsed.birth_date == born
    if born:
        assert parsed.normalised == number
        assert parsed.sex == ("M" if int(number[8]) % 2 else "F")


def test_individual_number_that_fits_no_century():
    number = first_norwegian("010145", range(500, 750))  # 500-749 is 1854-1899 or 2000-2039
    parsed = parse_norwegian(number)
    assert not parsed.valid and "individual number" in parsed.reason


def test_d_nummer_day_plus_forty_and_h_nummer_month_plus_forty():
    d = parse_norwegian(first_norwegian("410170", range(0, 500)))
    assert d.valid and d.kind is NationalKind.NO_D_NUMMER and d.birth_date == date(1970, 1, 1)
    assert d.links_persons
    h = parse_norwegian(first_norwegian("154170", range(0, 500)))
    assert h.valid and h.kind is NationalKind.NO_H_NUMMER and h.birth_date == date(1970, 1, 15)
    assert not h.links_persons  # an enterprise-internal help number
    fh = parse_norwegian(first_norwegian("812345", range(0, 1000)))
    assert fh.valid and fh.kind is NationalKind.NO_FH_NUMMER and fh.birth_date is None
    assert not fh.links_persons
    assert not parse_norwegian(first_norwegian("720170", range(0, 500))).valid  # day 32


def test_norwegian_check_digits():
    number = first_norwegian("010190", range(0, 500))
    for bad in (number[:9] + str((int(number[9]) + 1) % 10) + number[10], number[:10] + str((int(number[10]) + 1) % 10)):
        parsed = parse_norwegian(bad)
        assert not parsed.valid and "check digits" in parsed.reason
    assert not parse_norwegian(number[:10]).valid
    # When K1 would be 10 no valid number exists for those nine digits.
    nine = next(
        f"010190{i:03d}" for i in range(500) if mod11(f"010190{i:03d}", [3, 7, 6, 1, 8, 9, 4, 5, 2]) == 10
    )
    assert not any(parse_norwegian(f"{nine}{k:02d}").valid for k in range(100))
    assert parse_norwegian(number[:6] + " " + number[6:]).valid  # a space is ignored


# --- Denmark ------------------------------------------------------------------


@pytest.mark.parametrize(
    "cpr, born",
    [
        ("0101651234", date(1965, 1, 1)),  # 7th digit 0-3: 1900s
        ("010110-4123", date(2010, 1, 1)),  # 4, year <= 36: 2000s
        ("0101504123", date(1950, 1, 1)),  # 4, year >= 37: 1900s
        ("0101209123", date(2020, 1, 1)),  # 9 like 4
        ("0101605123", date(1860, 1, 1)),  # 5-8, year >= 58: 1800s
        ("0101578123", date(2057, 1, 1) if TODAY.year >= 2057 else None),  # 5-8, year <= 57: 2000s (future)
    ],
)
def test_cpr_century_from_the_seventh_digit(cpr: str, born: date | None):
    parsed = parse_danish(cpr, TODAY)
    assert parsed.valid is (born is not None)
    assert parsed.birth_date == born
    if born:
        assert parsed.normalised == cpr.replace("-", "")


def test_cpr_without_modulus_11_is_valid():
    # CPR has issued numbers failing modulus 11 since 1 October 2007 (cpr.dk).
    weights = [4, 3, 2, 7, 6, 5, 4, 3, 2, 1]
    number = next(
        f"010165{i:04d}" for i in range(1000, 2000) if sum(int(d) * w for d, w in zip(f"010165{i:04d}", weights)) % 11
    )
    parsed = parse_danish(number, TODAY)
    assert parsed.valid and parsed.birth_date == date(1965, 1, 1)
    assert parsed.sex == ("M" if int(number[9]) % 2 else "F")


@pytest.mark.parametrize("cpr", ["3002651234", "0113651234", "010165123", "010165-12345", "01016512X4"])
def test_invalid_cpr(cpr: str):
    assert not parse_danish(cpr, TODAY).valid


# --- issuers and datasets -------------------------------------------------------


def test_issuer_oids():
    assert NATIONAL_ISSUERS == {
        SE_PNR: NationalKind.SE_PERSONNUMMER,
        SE_SNR: NationalKind.SE_SAMORDNINGSNUMMER,
        NO_FNR: NationalKind.NO_FODSELSNUMMER,
        NO_DNR: NationalKind.NO_D_NUMMER,
        NO_HNR: NationalKind.NO_H_NUMMER,
        DK_CPR: NationalKind.DK_CPR,
    }
    assert national_kind_of_issuer(f"urn:oid:{SE_PNR}") is NationalKind.SE_PERSONNUMMER
    assert national_kind_of_issuer("KAROLINSKA") is None
    assert national_kind_of_issuer(None) is None


def test_sibling_kind_under_the_other_issuer():
    snr = parse_national("701063-2391", NationalKind.SE_PERSONNUMMER, TODAY)
    assert snr.valid and snr.kind is NationalKind.SE_SAMORDNINGSNUMMER  # same person's number, disjoint days
    h = parse_national(first_norwegian("154170", range(0, 500)), NationalKind.NO_FODSELSNUMMER)
    assert not h.valid and "no-h-nummer" in h.reason  # a help number is no fødselsnummer
    d = parse_national(first_norwegian("410170", range(0, 500)), NationalKind.NO_FODSELSNUMMER)
    assert d.valid and d.kind is NationalKind.NO_D_NUMMER


def _issuer_item(patient_id: str, local: str = "", universal: str = "") -> Dataset:
    item = Dataset()
    item.PatientID = patient_id
    if local:
        item.IssuerOfPatientID = local
    if universal:
        q = Dataset()
        q.UniversalEntityID = universal
        q.UniversalEntityIDType = "ISO"
        item.IssuerOfPatientIDQualifiersSequence = [q]
    item.TypeOfPatientID = "TEXT"
    return item


def test_identifiers_in_dataset():
    ds = _issuer_item("KS-1001", local="KS", universal="1.2.752.99.1")
    ds.OtherPatientIDsSequence = [
        _issuer_item("19640823-3234", local=SE_PNR),  # national, issuer as Issuer of Patient ID
        _issuer_item("640823-3235", universal=SE_PNR),  # national in the qualifiers, bad check digit
        _issuer_item("SU-77", local="SU"),  # another hospital's local ID
        _issuer_item("", local="SU"),  # no Patient ID: skipped
    ]
    found = list(identifiers_in_dataset(ds, TODAY))
    assert [(f.value, f.source) for f in found] == [
        ("KS-1001", "PatientID"),
        ("19640823-3234", "OtherPatientIDsSequence"),
        ("640823-3235", "OtherPatientIDsSequence"),
        ("SU-77", "OtherPatientIDsSequence"),
    ]
    assert found[0].issuer == Issuer("KS", "1.2.752.99.1", "ISO") and found[0].national is None
    assert found[1].national.valid and found[1].national.normalised == "196408233234"
    assert found[2].national is not None and not found[2].national.valid
    assert found[3].national is None


def test_national_number_as_patient_id():
    ds = _issuer_item("0101651234", universal=f"urn:oid:{DK_CPR}")
    (only,) = identifiers_in_dataset(ds, TODAY)
    assert only.national.kind is NationalKind.DK_CPR and only.national.valid
    bare = Dataset()
    bare.PatientID = "0101651234"  # no issuer: not taken for a national number
    assert next(identifiers_in_dataset(bare)).national is None
