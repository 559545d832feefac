"""General acknowledgment (ACK) messages, original acknowledgment mode
(HL7 v2.5 2.9.2 and 2.14.1; MSA 2.15.8; ERR 2.15.5).

The ACK answers in the message's own delimiters, version and character set,
echoes its control ID in MSA-2, swaps sending and receiving application and
facility, and carries one ERR segment per problem: from v2.5 on ERR-2 error
location (ERL), ERR-3 HL7 error code (CWE, Table 0357), ERR-4 severity
(Table 0516), ERR-7 diagnostic information; before v2.5, ERR-1 (ELD: segment,
sequence, field, code) and MSA-3 text.

hl7apy can build messages too, but with custom delimiters its ER7 output
drops segment separators and places v2.8 ERR fields wrongly, so the few
fields of an ACK are written here.
"""

from __future__ import annotations

import itertools
import os
from datetime import datetime

from .er7 import Delimiters, Header
from .message import Issue, Location

_counter = itertools.count(1)
_PREFIX = f"SAMARKIV{os.getpid() % 100000:05d}"


def _control_id() -> str:
    """A unique MSH-10 for each ACK this process sends (at most 20 characters)."""
    return f"{_PREFIX}{next(_counter) % 10**7:07d}"


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (2, 5)


def _erl(d: Delimiters, loc: Location) -> str:
    parts = [loc.segment, str(loc.sequence)]
    for value in (loc.field, loc.repetition, loc.component):
        if value is None:
            break
        parts.append(str(value))
    return d.component.join(parts)


def _err_segment(d: Delimiters, version: tuple[int, ...], issue: Issue) -> str:
    code, name = issue.code
    f = d.field
    if version >= (2, 5):
        cwe = d.component.join((str(code), d.escaped(name), "HL70357"))
        location = _erl(d, issue.location) if issue.location else ""
        return f"ERR{f}{f}{location}{f}{cwe}{f}{issue.severity}{f}{f}{f}{d.escaped(issue.text)}"
    # ELD: segment ID ^ sequence ^ field position ^ code (CE: id & text & table)
    loc = issue.location or Location("")
    ce = d.subcomponent.join((str(code), d.escaped(name), "HL70357"))
    eld = d.component.join((loc.segment, str(loc.sequence) if loc.segment else "", str(loc.field or ""), ce))
    return f"ERR{f}{eld}"


def build_ack(
    header: Header | None,
    ack_code: str,
    issues: list[Issue],
    *,
    application: str = "SAMARKIV",
    facility: str = "",
    default_version: str = "2.5",
    now: datetime | None = None,
) -> str:
    """The ACK for a message whose MSH was ``header`` (None: no readable MSH,
    answered in the default delimiters and ``default_version``)."""
    d = header.delimiters if header else Delimiters()
    version_text = header.version if header and header.version else default_version
    version = _version_tuple(version_text)
    if version < (2, 1):
        version, version_text = (2, 5), default_version
    f = d.field
    trigger = header.trigger_event if header else ""
    if version >= (2, 3, 1):
        message_type = d.component.join(("ACK", d.escaped(trigger), "ACK")) if trigger else "ACK"
    elif version >= (2, 3):
        message_type = d.component.join(("ACK", d.escaped(trigger))) if trigger else "ACK"
    else:
        message_type = "ACK"
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z")
    processing = header.processing_id if header and header.processing_id in ("P", "D", "T") else "P"
    msh = [
        "MSH",
        d.encoding_characters,
        d.escaped(application),
        d.escaped(facility),
        header.sending_application if header else "",
        header.sending_facility if header else "",
        stamp,
        "",
        message_type,
        _control_id(),
        processing,
        d.escaped(version_text),
    ]
    if header and header.charset:
        msh += ["", "", "", "", "", d.escaped(header.charset)]
    # MSH-1 is the field separator itself: "MSH" + "|" + "^~\&" + "|" ...
    segments = [msh[0] + f + f.join(msh[1:])]
    msa = ["MSA", ack_code, d.escaped(header.control_id if header else "")]
    if version < (2, 5) and issues:
        msa.append(d.escaped(issues[0].text))
    segments.append(f.join(msa))
    segments += [_err_segment(d, version, issue) for issue in issues]
    return "\r".join(segments) + "\r"
