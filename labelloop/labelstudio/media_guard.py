"""Where a media request may go: hosts, paths and the addresses connected to.

Guard rails (``HostPolicy`` decides before a request, ``guarded_client`` checks each connection):

- a URL on Label Studio's origin (scheme, host and port) must be one of its media paths under its
  base path (``labelloop.labelstudio.media_sources.media_path_refusal``): it carries the API key;
- any other URL must be on a host listed in ``allow_hosts``, unless Label Studio redirected to it
  (that is how presigned URLs work); redirects are followed by hand (``media_fetch``);
- every connection goes through ``_GuardedBackend``: the host is resolved once and the socket is
  connected to an address of that answer (no second lookup, so no DNS rebinding in between); a
  host that is neither Label Studio's origin nor in ``allow_hosts`` (those are trusted to be
  internal, e.g. a MinIO on a private network) must resolve to global addresses only: loopback,
  private, link-local (cloud metadata, 169.254.169.254), shared (100.64.0.0/10), unspecified,
  multicast and reserved ones are refused, IPv4 addresses inside IPv6 ones (``::ffff:a.b.c.d``,
  NAT64, 6to4) included;
- proxies from the environment and ``.netrc`` are ignored (through a proxy, the proxy would
  choose the address).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from labelloop.labelstudio.media_sources import media_path_refusal, origin, shown
from labelloop.labelstudio.media_types import MediaConfig, MediaError


def host_rule(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a URL -> (host, port or None for any port)."""
    parts = urlsplit(entry if "://" in entry else "//" + entry)
    if not parts.hostname:
        raise ValueError(f"not a host: {entry!r}")
    return parts.hostname.lower(), parts.port


class HostPolicy:
    """Which URLs and hosts media requests may reach (see the module docstring).

    Args:
        config: ``label_studio_url`` (its origin and base path) and ``allow_hosts``.

    Raises:
        ValueError: an ``allow_hosts`` entry is not a host.
    """

    def __init__(self, config: MediaConfig) -> None:
        base = (config.label_studio_url or "").rstrip("/")
        self.ls_origin = origin(base) if base else None
        self._ls_path = urlsplit(base).path  # a base path ("/ls") media paths follow
        self._hosts = [host_rule(h) for h in config.allow_hosts]

    def allowed(self, where: tuple[str, str, int]) -> bool:
        """True for Label Studio's origin and the hosts of ``allow_hosts`` ((scheme, host, port))."""
        if where == self.ls_origin:
            return True
        return any(host == where[1] and (port is None or port == where[2]) for host, port in self._hosts)

    def may_be_internal(self, host: str, port: int) -> bool:
        """True for Label Studio's host and port and the hosts in ``allow_hosts``: those may
        resolve to internal addresses (``_GuardedBackend`` asks, for every connection)."""
        host = host.lower()
        if self.ls_origin is not None and (host, port) == self.ls_origin[1:]:
            return True
        return any(h == host and (p is None or p == port) for h, p in self._hosts)

    def ls_refusal(self, url: str) -> str | None:
        """Why ``url``, on Label Studio's origin, must not be requested with the API key; None
        when it is one of its media paths under its base path."""
        parts = urlsplit(url)
        if not (parts.path + "/").startswith(self._ls_path + "/"):
            return f"not under Label Studio's base path {self._ls_path}: {shown(url)}"
        return media_path_refusal(parts.path[len(self._ls_path) :], parts.query)


def guarded_client(policy: HostPolicy, threads: int, timeout_s: float, auth: httpx.Auth | None) -> httpx.Client:
    """An httpx client whose connections are checked by ``policy`` (``_GuardedBackend``): at most
    ``threads`` connections, ``timeout_s`` per phase of a request (connect, read...), redirects
    not followed, no proxy or ``.netrc`` from the environment, ``auth`` on every request (it must
    itself send the token to Label Studio's origin only, as ``LabelStudioAuth`` does)."""
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    return httpx.Client(
        transport=_GuardedTransport(_GuardedBackend(policy.may_be_internal), limits),
        auth=auth,
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        trust_env=False,  # no proxy from the environment (it would pick the address), no .netrc
        headers={"User-Agent": "labelloop-media/1", "Accept-Encoding": "identity"},
    )


# Addresses -----------------------------------------------------------------------------------
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598), not global
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)  # AWS, GCP, Azure, OpenStack; AWS over IPv6; Alibaba Cloud


def _internal_reason(address: str) -> str | None:
    """Why ``address`` (an IP address, IPv6 zone allowed) is internal ("a loopback address", "a
    private address", "a link-local address", ...), or None for a global unicast address. An
    IPv4 address carried in an IPv6 one (IPv4-mapped, NAT64, 6to4) is judged as that IPv4
    address."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        else:
            ip = ip.ipv4_mapped or ip.sixtofour or ip
    if ip in _METADATA:
        return "a cloud metadata service address"
    for flag, reason in (
        ("loopback", "a loopback address"),
        ("link_local", "a link-local address"),
        ("unspecified", "the unspecified address"),
        ("multicast", "a multicast address"),  # is_global is True for some of them
        ("reserved", "a reserved address"),
        ("private", "a private address"),
    ):
        if getattr(ip, "is_" + flag):
            return reason
    if ip in _SHARED:
        return "in the shared address space 100.64.0.0/10"
    return None if ip.is_global else "not a global address"


def _resolve(host: str, port: int) -> list[str]:
    """The IP addresses of ``host``, in the resolver's order, from one ``getaddrinfo`` (an IP
    literal is returned as it is, without a lookup).

    Raises:
        httpcore.ConnectError: the name does not resolve (retried like any connect error).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and str(sockaddr[0]) not in addresses:
            addresses.append(str(sockaddr[0]))
    return addresses


class AddressRefused(MediaError):
    """A connection refused by ``_GuardedBackend`` (never retried)."""


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend with the address check done where the socket is connected.

    httpcore hands ``connect_tcp`` the host name of the URL; this backend resolves it once
    (``_resolve``), refuses it when ``may_be_internal(host, port)`` is False and any of its
    addresses is internal (``_internal_reason``), and connects to those same addresses, in order.
    Checking here rather than before the request means that the address checked is the address
    connected to (a name cannot resolve to a public address for the check and to 127.0.0.1 for
    the connection), for every connection a pool opens, retries included, while the URL, the
    ``Host`` header, TLS SNI and certificate checks keep the host name, and pooled connections
    stay keyed by it. (Rewriting the URL to the IP with ``sni_hostname`` would key the pool by
    IP: a TLS connection verified for one name could then carry requests for another.)
    """

    def __init__(self, may_be_internal: Callable[[str, int], bool]) -> None:
        self._inner = httpcore.SyncBackend()
        self._may_be_internal = may_be_internal

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _resolve(host, port)
        if not self._may_be_internal(host, port):
            for address in addresses:
                reason = _internal_reason(address)
                if reason is not None:
                    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    what = f"is {reason}" if address == host else f"resolves to {address}, {reason}"
                    raise AddressRefused(
                        f"address not allowed: {where} {what}; only Label Studio's origin and the hosts "
                        "in LABELLOOP_MEDIA_ALLOW_HOSTS may be internal"
                    )
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:  # pragma: no cover - image URLs are never Unix sockets
        raise httpcore.ConnectError("Unix sockets are not used for task images")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport (requests, responses, exception mapping) on a connection pool whose
    sockets come from ``_GuardedBackend``.

    ``httpx.HTTPTransport`` takes no network backend, so the pool it builds is replaced by one
    built with the same arguments plus the backend; if httpx ever stops keeping its pool in
    ``_pool``, this fails here rather than running unguarded.
    """

    def __init__(self, backend: _GuardedBackend, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError("httpx.HTTPTransport has no _pool: cannot install the media address guard")
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )
