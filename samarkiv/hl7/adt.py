"""ADT events mapped onto the master patient index (samarkiv/identity).

- A01 admit, A04 register, A08 update patient information (HL7 v2.5 3.3.1,
  3.3.4, 3.3.8): the PID-3 identifiers are resolved like a stored dataset's
  (``resolve_identity``: a valid national number links the others to the
  person holding it), further local identifiers the archive has not seen are
  put on the same person, and the demographics are recorded
  (demographics.py).
- A40 merge patient - patient identifier list (3.3.40): the person of each
  MRG-1 prior identifier is merged into the person of PID-3 (``merge``).
- A24 link patient information (3.3.24): the second PID's identifier is
  linked to the first PID's person (``link``).
- A37 unlink patient information (3.3.37): the second PID's identifier is
  separated from the first's person (``unlink``).

PID-3 identifiers (CX) are keyed like DICOM's Patient ID and issuer: a
national issuer OID in CX.4's universal ID (or namespace ID) marks a national
number, as does identifier type NNSWE, NNNOR or NNDNK (Table 0203) without an
assigning authority; a namespace ID that is an organisation's code, or a
universal ID that is its issuer's, stands for that organisation's issuer; an
identifier without an assigning authority belongs to the message's
organisation: the one whose code is MSH-4's namespace ID, else
``hl7_organisation``, else the default organisation.

Each message is one index transaction: any error rolls everything back, and
the ACK says AE or AR. Changes are in ``identity_history`` with actor
``hl7:<sending application>^<sending facility>``. Patient data is logged at
debug level only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import SQLAlchemyError

from ..config import Settings
from ..identity.national import ISSUER_OF_KIND, Issuer, national_kind_of_issuer, parse_norwegian, parse_swedish
from ..index.identity_schema import patient_identifiers
from ..identity.organisations import Organisation, default_organisation, get_organisation, organisation_for_issuer
from ..identity.patients import (
    Canonical,
    Identifier,
    IdentityError,
    UnknownIdentifier,
    canonicalise,
    find_identifier,
    link,
    merge,
    person_of,
    resolve_identity,
    unlink,
)
from . import demographics
from .ack import build_ack
from .er7 import Er7Error, Header, decode, read_header
from .message import AckCode, AdtMessage, Cx, ErrorCode, Issue, Location, MessageError, Patient, parse

log = logging.getLogger(__name__)

EVENTS = ("A01", "A04", "A08", "A24", "A37", "A40")
_LO = 64


@dataclass(frozen=True)
class Key:
    """A PID-3/MRG-1 identifier resolved to its canonical key."""

    cx: Cx
    canonical: Canonical
    issuer: Issuer | str | None  # as given to resolve_identity

    @property
    def national(self) -> bool:
        n = self.canonical.national
        return n is not None and n.links_persons


@dataclass
class Outcome:
    warnings: list[Issue] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # history actions, for the log


def _error(code: tuple[int, str], text: str, location: Location | None) -> MessageError:
    return MessageError(AckCode.ERROR, Issue(code, text, location))


class AdtProcessor:
    """Turns one inbound message into index changes and its ACK."""

    def __init__(self, writer: Engine, settings: Settings) -> None:
        self.writer = writer
        self.settings = settings

    # --- the entry point ---------------------------------------------------------

    def handle(self, raw: bytes) -> bytes:
        """The encoded ACK for the raw message (MLLP payload)."""
        header: Header | None = None
        codec = "utf-8"
        try:
            text, codec = decode(raw)
            header = read_header(text)
            message = parse(text, header)
            outcome = self._process(message)
        except Er7Error as exc:
            if header is None:  # e.g. an unknown charset: still echo what MSH says
                try:
                    header = read_header(raw.decode("latin-1"))
                    codec = "latin-1"
                except Er7Error:
                    pass
            return self._ack(header, AckCode.REJECT, [Issue(ErrorCode.SEGMENT_SEQUENCE, str(exc), Location("MSH"))], codec)
        except MessageError as exc:
            log.info("HL7 message %s: %s %s", _describe(header), exc.ack_code, exc.issue.code[0])
            log.debug("HL7 refusal detail: %s", exc.issue.text)
            return self._ack(header, exc.ack_code, [exc.issue], codec)
        except (SQLAlchemyError, OSError) as exc:
            log.error("HL7 message %s not processed: %s", _describe(header), exc.__class__.__name__)
            issue = Issue(ErrorCode.INTERNAL, "the index could not be updated; send again later")
            return self._ack(header, AckCode.ERROR, [issue], codec)
        assert header is not None
        log.info("HL7 message %s: AA (%s)", _describe(header), ", ".join(outcome.changes) or "no identity change")
        return self._ack(header, AckCode.ACCEPT, outcome.warnings, codec)

    def _ack(self, header: Header | None, code: str, issues: list[Issue], codec: str) -> bytes:
        text = build_ack(header, code, issues, application=self.settings.aet)
        return text.encode(codec, errors="replace")

    # --- dispatch ----------------------------------------------------------------

    def _process(self, message: AdtMessage) -> Outcome:
        h = message.header
        if h.message_type != "ADT":
            raise MessageError(
                AckCode.REJECT, Issue(ErrorCode.MESSAGE_TYPE, "only ADT messages are accepted", Location("MSH", 1, 9))
            )
        if h.trigger_event not in EVENTS:
            raise MessageError(
                AckCode.REJECT,
                Issue(ErrorCode.EVENT_CODE, f"accepted events: {', '.join(EVENTS)}", Location("MSH", 1, 9, None, 2)),
            )
        if not message.patients:
            raise _error(ErrorCode.SEGMENT_SEQUENCE, "the message has no PID segment", Location("PID"))
        handler: Callable[[Connection, AdtMessage, _Context], None] = {
            "A01": _update, "A04": _update, "A08": _update, "A40": _merge, "A24": _link, "A37": _unlink,
        }[h.trigger_event]  # fmt: skip
        outcome = Outcome([w for p in message.patients for w in p.warnings])
        with self.writer.begin() as conn:
            ctx = _Context(conn, self.settings, h, self._owner(conn, h), outcome)
            try:
                handler(conn, message, ctx)
            except UnknownIdentifier as exc:
                raise _error(ErrorCode.UNKNOWN_KEY, str(exc), ctx.location) from None
            except IdentityError as exc:
                raise _error(ErrorCode.INTERNAL, str(exc), ctx.location) from None
        return outcome

    def _owner(self, conn: Connection, h: Header) -> Organisation | None:
        """The organisation of identifiers without an assigning authority."""
        namespace, universal = h.component(h.sending_facility, 1), h.component(h.sending_facility, 2)
        org = get_organisation(conn, namespace) if namespace else None
        if org is None and universal:
            org = organisation_for_issuer(conn, Issuer(universal=universal))
        if org is None and self.settings.hl7_organisation:
            org = get_organisation(conn, self.settings.hl7_organisation)
            if org is None:
                raise _error(ErrorCode.INTERNAL, "hl7_organisation names no organisation", None)
        return org or default_organisation(conn, self.settings)


def _describe(header: Header | None) -> str:
    """Type, control ID and sender of a message: no patient data."""
    if header is None:
        return "(no readable MSH)"
    return f"{header.message_type}^{header.trigger_event} {header.control_id!r} from {header.sender!r}"


@dataclass
class _Context:
    conn: Connection
    settings: Settings
    header: Header
    owner: Organisation | None
    outcome: Outcome
    location: Location | None = None  # of the identifier being worked on, for ERR-2

    @property
    def actor(self) -> str:
        return f"hl7:{self.header.sender}"

    @property
    def reason(self) -> str:
        return f"HL7 ADT^{self.header.trigger_event} {self.header.control_id}"

    # --- identifiers -----------------------------------------------------------

    def issuer(self, cx: Cx) -> Issuer | str | None:
        """The issuer of a CX as the identity module takes it (module docstring)."""
        for oid in (cx.universal, cx.namespace):
            kind = national_kind_of_issuer(oid)
            if kind is not None:
                return Issuer(universal=ISSUER_OF_KIND[kind], universal_type="ISO")
        if not cx.namespace and not cx.universal:
            national = _national_by_type(cx)
            if national is not None:
                return national
            return Issuer(local=cx.type_code) if cx.type_code.startswith("NN") and len(cx.type_code) == 5 else None
        if cx.namespace:
            org = get_organisation(self.conn, cx.namespace)
            if org is not None:
                return org.patient_id_issuer
        return Issuer(local=cx.namespace, universal=cx.universal, universal_type=cx.universal_type)

    def key(self, cx: Cx) -> Key:
        """The canonical key of a CX; AE for a value the index cannot take or
        a national number that fails its checks."""
        self.location = cx.location
        if len(cx.value) > _LO:
            raise _error(ErrorCode.DATA_TYPE, "CX.1 is longer than 64 characters", cx.location)
        if len(cx.namespace) > _LO or len(cx.universal) > _LO:
            raise _error(ErrorCode.DATA_TYPE, "CX.4 is longer than 64 characters", cx.location)
        issuer = self.issuer(cx)
        try:
            canonical = canonicalise(self.conn, cx.value, issuer, self.owner)
        except IdentityError:
            raise _error(
                ErrorCode.REQUIRED_FIELD, "CX.4 (assigning authority) is empty and no organisation owns the message",
                cx.location,
            ) from None  # fmt: skip
        national = canonical.national
        if national is not None and not national.valid:
            raise _error(
                ErrorCode.DATA_TYPE,
                f"invalid {national.kind or national.country} number: {national.reason}", cx.location,
            )  # fmt: skip
        return Key(cx, canonical, issuer)

    def keys(self, patient: Patient) -> list[Key]:
        keys = [self.key(cx) for cx in patient.identifiers if cx.value]
        if not keys:
            raise _error(ErrorCode.REQUIRED_FIELD, "PID-3 has no identifier", Location("PID", patient.sequence, 3))
        return keys

    def resolve(self, patient: Patient) -> tuple[Key, int, list[Key]]:
        """Resolve a PID's identifiers: (primary key, its identifier pk, the
        others); creates unknown ones, links by national number."""
        keys = self.keys(patient)
        primary = next((k for k in keys if not k.national), keys[0])
        nationals = [k for k in keys if k.national and k is not primary]
        self.location = primary.cx.location
        resolved = resolve_identity(
            self.conn, primary.cx.value, primary.issuer, [(k.cx.value, k.issuer) for k in nationals], self.owner,
            actor=self.actor,
        )  # fmt: skip
        if resolved.linked:
            self.outcome.changes.append("auto-link")
        for text in resolved.conflicts:
            self.outcome.warnings.append(
                Issue(ErrorCode.INTERNAL, f"identity conflict recorded: {text}", primary.cx.location, "W")
            )
        others = [k for k in keys if k is not primary]
        primary = Key(primary.cx, Canonical(resolved.identifier, primary.canonical.national), primary.issuer)
        return primary, resolved.identifier_pk, others

    def stored(self, key: Key) -> Key:
        """The key as the index holds it (a national number in any written
        form); UnknownIdentifier (AE 204) when it holds none."""
        self.location = key.cx.location
        return Key(key.cx, Canonical(find_identifier(self.conn, key.canonical), key.canonical.national), key.issuer)


def identifier_row(conn: Connection, ident: Identifier):  # type: ignore[no-untyped-def]
    """(pk, person_pk) of a stored identifier, or None."""
    pi = patient_identifiers
    return conn.execute(
        select(pi.c.pk, pi.c.person_pk).where(pi.c.value == ident.value, pi.c.issuer == ident.issuer)
    ).first()


def _national_by_type(cx: Cx) -> Issuer | None:
    """A national number known only by its identifier type (Table 0203
    NNxxx, ISO 3166 alpha-3 country) and its own shape."""
    kind = None
    if cx.type_code == "NNSWE":
        kind = parse_swedish(cx.value).kind
    elif cx.type_code == "NNNOR":
        kind = parse_norwegian(cx.value).kind
    elif cx.type_code == "NNDNK":
        kind = national_kind_of_issuer("1.2.208.176.1.2")
    if kind is None:
        return None
    return Issuer(universal=ISSUER_OF_KIND[kind], universal_type="ISO")


# --- events ---------------------------------------------------------------------


def _record_demographics(ctx: _Context, patient: Patient, keys: list[tuple[int, Key]]) -> None:
    for identifier_pk, key in keys:
        ident = key.canonical.identifier
        demographics.record(
            ctx.conn, identifier_pk, ident.value, ident.issuer, patient.demographics,
            source=ctx.actor, event=f"ADT^{ctx.header.trigger_event}", control_id=ctx.header.control_id,
        )  # fmt: skip
        log.debug("HL7 demographics of %s: %s", ident, patient.demographics)


def _update(conn: Connection, message: AdtMessage, ctx: _Context) -> None:
    """A01/A04/A08: resolve PID-3, add unseen local identifiers to the person,
    record the demographics for each identifier now on the person."""
    patient = message.patients[0]
    primary, primary_pk, others = ctx.resolve(patient)
    person = person_of(conn, primary.canonical.identifier)
    on_person: list[tuple[int, Key]] = [(primary_pk, primary)]
    for key in others:
        ctx.location = key.cx.location
        ident = key.canonical.identifier
        row = identifier_row(conn, ident)
        if row is None and not key.national:
            link(conn, primary.canonical.identifier, key.canonical, actor=ctx.actor, reason=ctx.reason)
            ctx.outcome.changes.append("link")
            row = identifier_row(conn, ident)
        if row is None:
            continue
        if row.person_pk == person:
            on_person.append((row.pk, key))
        else:
            ctx.outcome.warnings.append(
                Issue(
                    ErrorCode.INTERNAL, "identifier belongs to another person; not moved (use A24 or A40)",
                    key.cx.location, "W",
                )
            )  # fmt: skip
    _record_demographics(ctx, patient, on_person)


def _merge(conn: Connection, message: AdtMessage, ctx: _Context) -> None:
    """A40: merge the person of each MRG-1 identifier into PID-3's person."""
    if not message.has_mrg:
        raise _error(ErrorCode.SEGMENT_SEQUENCE, "ADT^A40 needs an MRG segment", Location("MRG"))
    prior_cx = [cx for cx in message.prior_identifiers if cx.value]
    if not prior_cx:
        raise _error(ErrorCode.REQUIRED_FIELD, "MRG-1 has no identifier", Location("MRG", 1, 1))
    priors = [ctx.stored(ctx.key(cx)) for cx in prior_cx]  # all known, or AE 204 before any change
    patient = message.patients[0]
    survivor, survivor_pk, _ = ctx.resolve(patient)
    target = person_of(conn, survivor.canonical.identifier)
    for prior in priors:
        ctx.location = prior.cx.location
        source = person_of(conn, prior.canonical.identifier)
        if source is None or target is None or source == target:
            continue
        merge(conn, source, target, actor=ctx.actor, reason=ctx.reason)
        ctx.outcome.changes.append("merge")
    _record_demographics(ctx, patient, [(survivor_pk, survivor)])


def _two_patients(message: AdtMessage) -> tuple[Patient, Patient]:
    if len(message.patients) < 2:
        raise _error(
            ErrorCode.SEGMENT_SEQUENCE, f"ADT^{message.header.trigger_event} needs two PID segments", Location("PID", 2)
        )
    return message.patients[0], message.patients[1]


def _link(conn: Connection, message: AdtMessage, ctx: _Context) -> None:
    """A24: put the second PID's identifier on the first PID's person."""
    first, second = _two_patients(message)
    one, _, _ = ctx.resolve(first)
    two, _, _ = ctx.resolve(second)
    ctx.location = two.cx.location
    if link(conn, two.canonical.identifier, one.canonical.identifier, actor=ctx.actor, reason=ctx.reason):
        ctx.outcome.changes.append("link")


def _unlink(conn: Connection, message: AdtMessage, ctx: _Context) -> None:
    """A37: separate the second PID's identifier from the first PID's person."""
    first, second = _two_patients(message)
    one = ctx.stored(ctx.keys(first)[0])
    two = ctx.stored(ctx.keys(second)[0])
    if one.canonical.identifier == two.canonical.identifier:
        raise _error(ErrorCode.DATA_TYPE, "both PID segments name the same identifier", two.cx.location)
    if person_of(conn, one.canonical.identifier) != person_of(conn, two.canonical.identifier):
        return  # not linked: nothing to undo
    ctx.location = two.cx.location
    unlink(conn, two.canonical.identifier, actor=ctx.actor, reason=ctx.reason)
    ctx.outcome.changes.append("unlink")
