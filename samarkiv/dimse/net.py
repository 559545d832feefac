"""Socket settings for every association, as acceptor and as requestor."""

from __future__ import annotations

import socket

from pynetdicom import evt


def no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: pynetdicom leaves Nagle on, and small C-STOREs
    then crawl at about 20 per second."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


NO_DELAY_HANDLERS = [(evt.EVT_CONN_OPEN, no_delay)]
