"""The rating page's addresses: which Host headers name it (:func:`page_hosts`), the origin of its ``--url``
(:func:`page_origin`), and which hosts are this machine only (:func:`is_loopback`, also the judge's rule for
sending an API key over plain HTTP)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

WILDCARDS = ("0.0.0.0", "::", "")
"""Addresses that listen on every interface of this machine."""
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def page_origin(url: str) -> str:
    """The origin a browser sends for a page at ``url``: ``scheme://host[:port]``, the scheme's default port left
    out."""
    parts = urlsplit(url.lower())
    port = None if parts.port == _DEFAULT_PORTS.get(parts.scheme) else parts.port
    return f"{parts.scheme}://{host_header(parts.hostname or '', port)}"


def page_hosts(host: str, port: int, url: str | None) -> frozenset[str]:
    """The Host headers that name the page: its address ``host:port`` (a loopback address by any loopback name;
    a wildcard address by this machine's names and addresses), and ``url``'s host (the address raters reach it
    at, through a proxy too)."""
    if host in WILDCARDS:
        names = {socket.gethostname(), socket.getfqdn(), *_LOOPBACK_NAMES, *_addresses(socket.gethostname())}
    else:
        names = {host, *(_LOOPBACK_NAMES if is_loopback(host) else ())}
    hosts = {host_header(name, port) for name in names}
    if url:
        parts = urlsplit(url.lower())
        if parts.hostname:
            default = _DEFAULT_PORTS.get(parts.scheme)
            hosts.add(host_header(parts.hostname, parts.port or default))
            if parts.port in (None, default):  # a browser leaves the default port out of Host
                hosts.add(host_header(parts.hostname, None))
    return frozenset(h.lower() for h in hosts)


def host_header(name: str, port: int | None) -> str:
    """``name[:port]`` as a Host header writes it (an IPv6 address in brackets)."""
    shown = f"[{name}]" if ":" in name else name
    return shown if port is None else f"{shown}:{port}"


def _addresses(name: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
    except OSError:  # a host name that does not resolve: its names and the loopback names only
        return set()
