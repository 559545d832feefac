"""The ``[audit]`` table of the config file.

```toml
[audit]
syslog = "tls://collector.example:6514"   # or "udp://127.0.0.1:514"; empty: no forwarding
ca_file = "/etc/samarkiv/collector-ca.pem"  # TLS: the CA that signed the collector's certificate
cert_file = "/etc/samarkiv/audit-client.pem"  # TLS: our client certificate (mutual TLS, IHE ATNA)
key_file = "/etc/samarkiv/audit-client.key"
anchor_every = 1000        # records between anchors
anchor_seconds = 300       # at most this long between anchors while records arrive
```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class AuditSettings:
    syslog: str = ""
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    anchor_every: int = 1000
    anchor_seconds: float = 300.0
    queue_size: int = 100_000
    batch_size: int = 1000
    linger_seconds: float = 0.25  # how long the writer gathers records before one commit
    source_id: str = ""  # AuditSourceID in DICOM audit messages [default: samarkiv@<host name>]


def parse_syslog_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``udp://host:port`` or ``tls://host:port``."""
    parts = urlsplit(url)
    if parts.scheme not in ("udp", "tls") or not parts.hostname:
        raise ValueError(f"audit syslog must be udp://HOST[:PORT] or tls://HOST[:PORT], not {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"audit syslog {url!r}: bad port") from None
    return parts.scheme, parts.hostname, port or (514 if parts.scheme == "udp" else 6514)


def parse_audit(value: Any) -> AuditSettings:
    """The ``[audit]`` table as settings (a ValueError names what is wrong)."""
    if isinstance(value, AuditSettings):
        return value
    if not isinstance(value, dict):
        raise ValueError("[audit] must be a table")
    names = {f.name: f for f in dataclasses.fields(AuditSettings)}
    unknown = set(value) - set(names)
    if unknown:
        raise ValueError(f"unknown [audit] setting(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for key, raw in value.items():
        if key in ("ca_file", "cert_file", "key_file"):
            out[key] = Path(raw) if raw else None
        elif key in ("anchor_every", "queue_size", "batch_size"):
            out[key] = int(raw)
            if out[key] < 1:
                raise ValueError(f"[audit] {key} must be at least 1")
        elif key in ("anchor_seconds", "linger_seconds"):
            out[key] = float(raw)
            if out[key] < 0:
                raise ValueError(f"[audit] {key} must not be negative")
        else:
            out[key] = str(raw)
    settings = AuditSettings(**out)
    if settings.syslog:
        parse_syslog_url(settings.syslog)
    return settings


def audit_settings(settings: Any) -> AuditSettings:
    """``settings.audit`` or the defaults."""
    return getattr(settings, "audit", None) or AuditSettings()
