"""Which ``Host`` a request may name: the names the server was started for, no others.

A web page on ``attacker.example`` can point that name at 127.0.0.1 (DNS rebinding)
and then read this server's answers as its own origin; the browser still sends
``Host: attacker.example``. Answering only the loopback names, the address given to
``--host`` and names allowed explicitly closes that door, and keeps a hostile ``Host``
out of the absolute URLs the clip-retrieval routes build from it.

A server bound to every address (``0.0.0.0``, ``::``) also answers a ``Host`` that is
an IP address literal: a rebinding page has a name, never an address, as its origin.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from .responses import JSONResponse

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"  # allowed explicitly: no check (a proxy in front checks instead)
ANY_ADDRESS = "<any address>"  # an allowed entry: any IP literal (a server bound to all addresses)
WILDCARD_BINDS = ("0.0.0.0", "::", "")
HOST_HEADER = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?$")


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The hosts a server listening on ``bound`` answers to: loopback names, ``bound``
    itself (for a wildcard bind, any address and this machine's name), and ``extra``."""
    hosts = list(LOOPBACK_HOSTS)
    if bound in WILDCARD_BINDS:
        hosts += [ANY_ADDRESS, socket.gethostname()]
    else:
        hosts.append(bound)
    hosts += list(extra)
    return tuple(dict.fromkeys(host_name(host) or host.strip().lower() for host in hosts if host.strip()))


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header without its port (lower case, IPv6 unbracketed);
    None when it is not a well-formed host."""
    match = HOST_HEADER.match(header.strip())
    if match is None:
        return None
    return (match.group("v6") or match.group("name")).lower().rstrip(".")


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class TrustedHosts:
    """400 for a request whose ``Host`` is not one of ``hosts`` (see the module's text).
    A request without ``Host`` (HTTP/1.0) passes: no browser sends one."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str]):
        self.app = app
        self.hosts = frozenset(host.lower() for host in hosts)

    def allows(self, header: str | None) -> bool:
        if header is None or ANY_HOST in self.hosts:
            return True
        host = host_name(header)
        if host is None:
            return False
        return host in self.hosts or (ANY_ADDRESS in self.hosts and is_address(host))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            values = [value for name, value in scope["headers"] if name == b"host"]
            header = values[0].decode("latin-1") if len(values) == 1 else None
            if len(values) > 1 or not self.allows(header):
                # answered here: a middleware's exception would reach only the 500 handler
                refused = JSONResponse({"error": "this server does not answer to that host name (the Host "
                                                 "header); it answers to the names it was started for"},
                                       status_code=400)
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = ["ANY_HOST", "LOOPBACK_HOSTS", "TrustedHosts", "allowed_hosts", "host_name"]
