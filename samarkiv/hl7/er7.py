"""ER7, HL7 v2's pipe-and-hat encoding: delimiters, escape sequences, the
message header, and character sets (HL7 v2.5 chapter 2: 2.5 message
construction, 2.7 use of escape sequences, 2.15.9 MSH, 2.15.9.18 character set).

hl7apy parses the message structure (message.py); this module holds what it
leaves to its callers: undoing escape sequences, writing them into the ACK,
and reading MSH before a full parse, so that even a message hl7apy refuses
gets an ACK that echoes its control ID in its own delimiters and version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# HL7 v2.5 Table 0211 (MSH-18) -> Python codec; anything else is refused.
CHARSETS: dict[str, str] = {
    "": "utf-8",  # ASCII by the standard; UTF-8 is its superset and common in practice
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/7": "iso8859-7",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
}
_HEX = re.compile(r"[0-9A-Fa-f]+")


class Er7Error(ValueError):
    """Text that is no HL7 v2 message (no MSH, bad delimiters, unknown charset)."""


@dataclass(frozen=True)
class Delimiters:
    """MSH-1 and MSH-2 (HL7 v2.5 2.5.4); segments end with a carriage return."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        return f"{self.component}{self.repetition}{self.escape}{self.subcomponent}"

    def escaped(self, text: str) -> str:
        """``text`` with the delimiters written as escape sequences (2.7.1)."""
        e = self.escape
        table = {
            e: f"{e}E{e}",
            self.field: f"{e}F{e}",
            self.component: f"{e}S{e}",
            self.subcomponent: f"{e}T{e}",
            self.repetition: f"{e}R{e}",
        }
        text = text.replace("\r", " ").replace("\n", " ")
        return "".join(table.get(ch, ch) for ch in text)

    def unescaped(self, text: str) -> str:
        """``text`` with its escape sequences undone: delimiters (2.7.1), hex
        data \\Xhh..\\ (2.7.3, as Latin-1 bytes); formatting and character set
        sequences (2.7.2, 2.7.4-2.7.6) are dropped."""
        e = self.escape
        if not e or e not in text:
            return text
        out: list[str] = []
        i = 0
        plain = {"F": self.field, "S": self.component, "T": self.subcomponent, "R": self.repetition, "E": e}
        while i < len(text):
            ch = text[i]
            end = text.find(e, i + 1) if ch == e else -1
            if end < 0:
                out.append(ch)
                i += 1
                continue
            body = text[i + 1 : end]
            if body in plain:
                out.append(plain[body])
            elif body[:1] == "X" and _HEX.fullmatch(body[1:] or "x") and len(body) % 2 == 1:
                out.append(bytes.fromhex(body[1:]).decode("latin-1"))
            elif body[:1] in ("H", "N") and len(body) == 1 or body[:1] in (".", "C", "M", "Z"):
                pass  # highlighting, formatting, charset escapes: no text of ours
            else:
                out.append(text[i : end + 1])  # not an escape sequence: keep as sent
            i = end + 1
        return "".join(out)


@dataclass(frozen=True)
class Header:
    """The MSH fields an ACK needs, read without a full parse (HL7 v2.5 2.15.9).
    Values are unescaped; HD and MSG fields keep their components."""

    delimiters: Delimiters
    sending_application: str  # MSH-3 (HD, as sent)
    sending_facility: str  # MSH-4 (HD, as sent)
    receiving_application: str  # MSH-5
    receiving_facility: str  # MSH-6
    message_type: str  # MSH-9.1
    trigger_event: str  # MSH-9.2
    message_structure: str  # MSH-9.3
    control_id: str  # MSH-10
    processing_id: str  # MSH-11.1
    version: str  # MSH-12.1
    charset: str  # MSH-18, first repetition

    def component(self, field: str, n: int) -> str:
        """Component ``n`` (1-based) of a field kept as sent, unescaped."""
        parts = field.split(self.delimiters.component)
        return self.delimiters.unescaped(parts[n - 1]) if n <= len(parts) else ""

    @property
    def sender(self) -> str:
        """``<sending application>^<sending facility>`` (their namespace IDs)."""
        return f"{self.component(self.sending_application, 1)}^{self.component(self.sending_facility, 1)}"


def split_segments(text: str) -> list[str]:
    """Segments, separated by CR (2.5.1); CR LF and lone LF are tolerated."""
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in text.split("\r") if s.strip()]


def read_header(text: str) -> Header:
    """MSH of ``text`` (a decoded message); Er7Error when it has none."""
    segments = split_segments(text)
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise Er7Error("the message does not start with an MSH segment")
    msh = segments[0]
    field_sep = msh[3]
    chars = msh[4:].split(field_sep)[0]
    # Four encoding characters; v2.7 adds a fifth, the truncation character.
    delimiters = field_sep + chars[:4]
    bad = len(chars) not in (4, 5) or len(set(delimiters)) != 5
    if bad or any(c.isalnum() or c.isspace() for c in field_sep + chars):
        raise Er7Error("MSH-1/MSH-2 do not give five distinct delimiters")
    d = Delimiters(field_sep, chars[0], chars[1], chars[2], chars[3])
    # fields[n] is MSH-n: MSH-1 is the separator itself, MSH-2 the encoding characters.
    fields = ["MSH", field_sep, *msh[4:].split(field_sep)]

    def get(n: int) -> str:
        return fields[n] if n < len(fields) else ""

    def first(n: int, comp: int = 1) -> str:
        value = get(n).split(d.repetition)[0].split(d.component)
        return d.unescaped(value[comp - 1]).strip() if comp <= len(value) else ""

    return Header(
        delimiters=d,
        sending_application=get(3).split(d.repetition)[0],
        sending_facility=get(4).split(d.repetition)[0],
        receiving_application=get(5).split(d.repetition)[0],
        receiving_facility=get(6).split(d.repetition)[0],
        message_type=first(9, 1),
        trigger_event=first(9, 2),
        message_structure=first(9, 3),
        control_id=first(10),
        processing_id=first(11),
        version=first(12),
        charset=d.unescaped(get(18).split(d.repetition)[0]).strip(),
    )


def decode(raw: bytes) -> tuple[str, str]:
    """The message text and the codec it was read with: MSH-18 names the
    character set (Table 0211); without one UTF-8 is tried, then Latin-1."""
    head = raw[: raw.find(b"\r")] if b"\r" in raw else raw
    charset = ""
    try:
        charset = read_header(head.decode("latin-1")).charset.upper()
    except Er7Error:
        pass  # the full decode below gives the real error
    codec = CHARSETS.get(charset)
    if codec is None:
        raise Er7Error(f"unsupported character set {charset!r} in MSH-18")
    try:
        return raw.decode(codec), codec
    except UnicodeDecodeError:
        if charset:
            raise Er7Error(f"the message is not valid {charset}") from None
        return raw.decode("latin-1"), "latin-1"
