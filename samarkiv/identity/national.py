"""National identity numbers of Sweden, Norway and Denmark, and the issuers
(OIDs) that mark them in DICOM.

A national number travels in Patient ID (0010,0020) with its issuer's OID in
Issuer of Patient ID (0010,0021) or in the Universal Entity ID (0040,0032) of
the Issuer of Patient ID Qualifiers Sequence (0010,0024) (PS3.3 C.7.1.1,
10.14), or as an item of the Other Patient IDs Sequence (0010,1002).

Issuer OIDs, checked against national sources:

- Sweden, personnummer 1.2.752.129.2.1.3.1 and samordningsnummer
  1.2.752.129.2.1.3.3: Inera, "Identifierare på Inera", list of OIDs used by
  the national service contracts (owner: Skatteverket, per SKV 704 / SKV 707),
  https://inera.atlassian.net/wiki/spaces/KINT/pages/468746902
- Norway, fødselsnummer 2.16.578.1.12.4.1.4.1, D-nummer 2.16.578.1.12.4.1.4.2,
  H-nummer 2.16.578.1.12.4.1.4.3: the Directorate of e-health's identifier
  series (ehelse.no, "OID-identifikatorserier i helse- og omsorgstjenesten"),
  as listed in Norsk helsenett's HelseID claim documentation ("pid"
  kodeverk) and the HL7 Norway no-basis profiles.
- Denmark, CPR 1.2.208.176.1.2: the national service platform (NSP) eCPR
  service, GetOIDs ("CPR-nummer"), https://www.nspop.dk/display/NDPV/eCPR+-+GetOIDs

Number rules:

- Swedish personnummer (Skatteverket, rättslig vägledning / SKV 704):
  YYMMDD-NNNC, the '-' becomes '+' from the year the person turns 100; stored
  with twelve digits (century 18, 19, 20); C is the Luhn (modulus 10, weights
  2-1) check digit of the ten-digit form; the third birth-number digit is odd
  for men. Samordningsnummer (SKV 707): the same, with the day plus 60.
- Norwegian fødselsnummer (folkeregisterforskriften, ehelse.no "Identifikatorer
  for personer"): DDMMYY III K1 K2; the individual number gives the century
  (500-749: 1854-1899, 000-499: 1900-1999, 900-999: 1940-1999, 500-999:
  2000-2039); two modulus 11 check digits (weights 3 7 6 1 8 9 4 5 2 and
  5 4 3 2 7 6 5 4 3 2); odd third individual digit for men. D-nummer: first
  digit plus 4 (day plus 40). H-nummer (KITH rapport 11/98, HIS 1001:2010):
  month plus 40; an enterprise-internal help number, never linked across
  organisations. First digit 8 or 9: felles hjelpenummer (FH, Norsk
  helsenett), no date; recognised, never linked.
- Danish CPR (cpr.dk, "Opbygning af CPR-nummeret"): DDMMYY-SSSS; the 7th
  digit with the year gives the century; the last digit is odd for men. The
  modulus 11 check is NOT applied: CPR has issued numbers without it since
  1 October 2007 and asks systems to accept them (cpr.dk, "Personnumre uden
  kontrolciffer (modulus 11 kontrol)").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any


class NationalKind(StrEnum):
    SE_PERSONNUMMER = "se-personnummer"
    SE_SAMORDNINGSNUMMER = "se-samordningsnummer"
    NO_FODSELSNUMMER = "no-fodselsnummer"
    NO_D_NUMMER = "no-d-nummer"
    NO_H_NUMMER = "no-h-nummer"
    NO_FH_NUMMER = "no-fh-nummer"
    DK_CPR = "dk-cpr"

    @property
    def country(self) -> str:
        return self.value[:2].upper()

    @property
    def links_persons(self) -> bool:
        """Whether a valid number of this kind identifies one person across
        organisations (help numbers do not)."""
        return self not in (NationalKind.NO_H_NUMMER, NationalKind.NO_FH_NUMMER)


# Issuer OID -> the kind its numbers should be (see the module docstring).
NATIONAL_ISSUERS: dict[str, NationalKind] = {
    "1.2.752.129.2.1.3.1": NationalKind.SE_PERSONNUMMER,
    "1.2.752.129.2.1.3.3": NationalKind.SE_SAMORDNINGSNUMMER,
    "2.16.578.1.12.4.1.4.1": NationalKind.NO_FODSELSNUMMER,
    "2.16.578.1.12.4.1.4.2": NationalKind.NO_D_NUMMER,
    "2.16.578.1.12.4.1.4.3": NationalKind.NO_H_NUMMER,
    "1.2.208.176.1.2": NationalKind.DK_CPR,
}
ISSUER_OF_KIND: dict[NationalKind, str] = {kind: oid for oid, kind in NATIONAL_ISSUERS.items()}


@dataclass(frozen=True)
class NationalNumber:
    """A parsed national number. ``normalised`` is the form kept in the index
    (Sweden: twelve digits, Norway: eleven, Denmark: ten, no separators)."""

    country: str
    kind: NationalKind | None
    value: str
    valid: bool
    normalised: str | None = None
    birth_date: date | None = None
    sex: str | None = None  # DICOM Patient's Sex: M or F
    reason: str = ""

    @property
    def links_persons(self) -> bool:
        return self.valid and self.kind is not None and self.kind.links_persons


def _invalid(country: str, value: str, reason: str, kind: NationalKind | None = None) -> NationalNumber:
    return NationalNumber(country, kind, value, False, reason=reason)


def _date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def luhn_check_digit(digits: str) -> int:
    """Modulus 10 with weights 2, 1, 2, ... from the left (the Swedish rule)."""
    total = 0
    for i, ch in enumerate(digits):
        product = int(ch) * (2 if i % 2 == 0 else 1)
        total += product - 9 if product > 9 else product
    return (10 - total % 10) % 10


def _mod11(digits: str, weights: tuple[int, ...]) -> int | None:
    """A Norwegian check digit, or None when the remainder makes it 10."""
    check = 11 - sum(int(d) * w for d, w in zip(digits, weights)) % 11
    if check == 11:
        return 0
    return None if check == 10 else check


_NO_K1 = (3, 7, 6, 1, 8, 9, 4, 5, 2)
_NO_K2 = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2)


def norwegian_check_digits(nine: str) -> str | None:
    """K1K2 for the first nine digits, or None when no valid pair exists."""
    k1 = _mod11(nine, _NO_K1)
    if k1 is None:
        return None
    k2 = _mod11(nine + str(k1), _NO_K2)
    return None if k2 is None else f"{k1}{k2}"


# --- Sweden -------------------------------------------------------------------


def parse_swedish(value: str, today: date | None = None) -> NationalNumber:
    """A personnummer or samordningsnummer in any of its usual forms:
    YYMMDD-NNNC, YYMMDD+NNNC, YYMMDDNNNC, YYYYMMDDNNNC, YYYYMMDD-NNNC.

    A ten-digit form takes the century that makes the person younger than
    100 in the current year with '-' (or no separator), at least 100 with '+'.
    """
    today = today or date.today()
    text = value.strip()
    separator = ""
    if len(text) in (11, 13) and text[-5] in "-+":
        separator, text = text[-5], text[:-5] + text[-4:]
    if not text.isdigit() or len(text) not in (10, 12):
        return _invalid("SE", value, "not 10 or 12 digits (with an optional '-' or '+')")
    if len(text) == 12:
        year = int(text[:4])
        ten = text[2:]
    else:
        ten = text
        yy = int(text[:2])
        year = today.year - (today.year - yy) % 100  # the latest year ending in yy
        if separator == "+":
            year -= 100
    month, day = int(ten[2:4]), int(ten[4:6])
    kind = NationalKind.SE_SAMORDNINGSNUMMER if day > 60 else NationalKind.SE_PERSONNUMMER
    born = _date(year, month, day - 60 if day > 60 else day)
    if born is None:
        return _invalid("SE", value, f"no such date {year:04d}-{ten[2:4]}-{ten[4:6]}", kind)
    if born > today:
        return _invalid("SE", value, "birth date in the future", kind)
    if ten[6:9] == "000":
        return _invalid("SE", value, "birth number 000 is never assigned", kind)
    if luhn_check_digit(ten[:9]) != int(ten[9]):
        return _invalid("SE", value, "wrong check digit", kind)
    sex = "M" if int(ten[8]) % 2 else "F"
    return NationalNumber("SE", kind, value, True, f"{year:04d}{ten[2:]}", born, sex)


# --- Norway -------------------------------------------------------------------


def _norwegian_century(individual: int, yy: int) -> int | None:
    if individual <= 499:
        return 1900
    if individual <= 749 and yy >= 54:
        return 1800
    if yy <= 39:
        return 2000
    if individual >= 900:
        return 1900
    return None


def parse_norwegian(value: str) -> NationalNumber:
    """A fødselsnummer, D-nummer (day + 40), H-nummer (month + 40) or felles
    hjelpenummer (first digit 8 or 9), eleven digits, spaces ignored."""
    text = value.strip().replace(" ", "")
    if not text.isdigit() or len(text) != 11:
        return _invalid("NO", value, "not 11 digits")
    first = int(text[0])
    if first >= 8:
        kind = NationalKind.NO_FH_NUMMER
    elif first >= 4:
        kind = NationalKind.NO_D_NUMMER
    elif int(text[2]) >= 4:
        kind = NationalKind.NO_H_NUMMER
    else:
        kind = NationalKind.NO_FODSELSNUMMER
    if norwegian_check_digits(text[:9]) != text[9:]:
        return _invalid("NO", value, "wrong check digits", kind)
    if kind is NationalKind.NO_FH_NUMMER:  # random digits: no date, no sex
        return NationalNumber("NO", kind, value, True, text)
    day = int(text[:2]) - (40 if kind is NationalKind.NO_D_NUMMER else 0)
    month = int(text[2:4]) - (40 if kind is NationalKind.NO_H_NUMMER else 0)
    yy, individual = int(text[4:6]), int(text[6:9])
    century = _norwegian_century(individual, yy)
    if century is None:
        return _invalid("NO", value, f"individual number {text[6:9]} is not used for year {yy:02d}", kind)
    born = _date(century + yy, month, day)
    if born is None:
        return _invalid("NO", value, f"no such date {century + yy:04d}-{month:02d}-{day:02d}", kind)
    sex = "M" if int(text[8]) % 2 else "F"
    return NationalNumber("NO", kind, value, True, text, born, sex)


# --- Denmark ------------------------------------------------------------------


def _danish_century(seventh: int, yy: int) -> int:
    if seventh <= 3:
        return 1900
    if seventh in (4, 9):
        return 2000 if yy <= 36 else 1900
    return 2000 if yy <= 57 else 1800  # 5 to 8


def parse_danish(value: str, today: date | None = None) -> NationalNumber:
    """A CPR number, DDMMYY-SSSS or DDMMYYSSSS (no modulus 11 check, see above)."""
    today = today or date.today()
    text = value.strip()
    if len(text) == 11 and text[6] == "-":
        text = text[:6] + text[7:]
    if not text.isdigit() or len(text) != 10:
        return _invalid("DK", value, "not 10 digits (with an optional '-')")
    yy = int(text[4:6])
    year = _danish_century(int(text[6]), yy) + yy
    born = _date(year, int(text[2:4]), int(text[:2]))
    kind = NationalKind.DK_CPR
    if born is None:
        return _invalid("DK", value, f"no such date {year:04d}-{text[2:4]}-{text[:2]}", kind)
    if born > today:
        return _invalid("DK", value, "birth date in the future", kind)
    sex = "M" if int(text[9]) % 2 else "F"
    return NationalNumber("DK", kind, value, True, text, born, sex)


# --- issuers ------------------------------------------------------------------


def national_kind_of_issuer(issuer: str | None) -> NationalKind | None:
    """The kind an issuer OID stands for (``urn:oid:`` prefix allowed)."""
    if not issuer:
        return None
    oid = issuer.strip()
    if oid.lower().startswith("urn:oid:"):
        oid = oid[8:]
    return NATIONAL_ISSUERS.get(oid)


def parse_national(value: str, kind: NationalKind, today: date | None = None) -> NationalNumber:
    """Parse ``value`` as a number of ``kind``'s country and check it is of that kind.

    Swedish personnummer and samordningsnummer, and Norwegian fødselsnummer and
    D-nummer, have disjoint digit ranges; a number of the sibling kind under
    the other's issuer is still the same person's number, so it stays valid
    with its real kind. A help number under a national issuer is not.
    """
    if kind.country == "SE":
        parsed = parse_swedish(value, today)
    elif kind.country == "NO":
        parsed = parse_norwegian(value)
    else:
        parsed = parse_danish(value, today)
    real = parsed.kind
    if parsed.valid and real is not None and real is not kind and real.links_persons != kind.links_persons:
        return _invalid(parsed.country, value, f"a {real} under the {kind} issuer", real)
    return parsed


# --- DICOM --------------------------------------------------------------------


@dataclass(frozen=True)
class Issuer:
    """Who issued a Patient ID: Issuer of Patient ID (0010,0021) and the
    Universal Entity ID (0040,0032) and its type (0040,0033) of the Issuer of
    Patient ID Qualifiers Sequence (0010,0024), PS3.3 10.14."""

    local: str = ""
    universal: str = ""
    universal_type: str = ""

    def __bool__(self) -> bool:
        return bool(self.local or self.universal)

    @property
    def national_kind(self) -> NationalKind | None:
        return national_kind_of_issuer(self.universal) or national_kind_of_issuer(self.local)


@dataclass(frozen=True)
class DatasetIdentifier:
    """One (Patient ID, issuer) a dataset carries; ``national`` is set when
    the issuer is a national one (valid or not)."""

    value: str
    issuer: Issuer
    source: str  # "PatientID" or "OtherPatientIDsSequence"
    national: NationalNumber | None = None


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def issuer_of(ds: Any) -> Issuer:
    """The Issuer of Patient ID and its qualifiers in ``ds`` (a pydicom Dataset
    or a sequence item)."""
    universal = universal_type = ""
    qualifiers = ds.get("IssuerOfPatientIDQualifiersSequence")
    if qualifiers:
        universal = _text(qualifiers[0], "UniversalEntityID")
        universal_type = _text(qualifiers[0], "UniversalEntityIDType")
    return Issuer(_text(ds, "IssuerOfPatientID"), universal, universal_type)


def identifier_of(value: str, issuer: Issuer, source: str, today: date | None = None) -> DatasetIdentifier:
    kind = issuer.national_kind
    national = parse_national(value, kind, today) if kind is not None and value else None
    return DatasetIdentifier(value, issuer, source, national)


def identifiers_in_dataset(ds: Any, today: date | None = None) -> Iterator[DatasetIdentifier]:
    """Patient ID with its issuer, then each Other Patient IDs Sequence item
    (PS3.3 C.7.1.1), each marked with its national number when its issuer is
    a national one. Items without a Patient ID are skipped."""
    yield identifier_of(_text(ds, "PatientID"), issuer_of(ds), "PatientID", today)
    for item in ds.get("OtherPatientIDsSequence") or ():
        value = _text(item, "PatientID")
        if value:
            yield identifier_of(value, issuer_of(item), "OtherPatientIDsSequence", today)
