"""A small asyncio Redis client for the receiver's hot path: RESP2, pipelined, bounded in time.

redis-py's asyncio client spends more CPU per command than the whole rest of a webhook (a
connection pool checkout, an ``asyncio.Lock``, a ``StreamWriter.drain`` and a read loop per
call). The receiver sends one ``EVALSHA`` per webhook, so it uses this instead:

- one persistent connection (an ``asyncio.Protocol``); commands issued in the same event-loop
  iteration go out in one ``write``, replies are parsed by hiredis and matched to requests in
  order (Redis answers a connection's commands in the order it received them);
- every command has a deadline (``timeout``); when the oldest unanswered command passes it,
  the connection is dropped and every command waiting on it fails with ``TimeoutError``;
- the connection is (re)opened on demand, bounded by ``connect_timeout``; concurrent callers
  share one attempt, so a Redis restart costs the requests in flight and nothing else; a
  connection idle for ``health_check_interval`` is PINGed before it is trusted again;
- an error reply is raised as ``RedisReplyError``; ``evalsha`` falls back to ``EVAL`` on
  ``NOSCRIPT`` (the script cache is empty after a Redis restart);
- the URL means what it means to redis-py (the Celery workers and the receiver's other client
  read the same one): redis-py's ``parse_url`` reads it, and a ``rediss://`` URL's ``ssl_*``
  options (``ssl_ca_certs``, ``ssl_cert_reqs``, ``ssl_certfile``, ...) become the
  ``ssl.SSLContext`` redis-py's own asyncio client builds for them.

Commands are never retried after they were written: the caller cannot know whether Redis ran
them, so it reports the failure (the receiver answers 503).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import RedisError

__all__ = ["RedisReplyError", "RespClient", "Script", "encode_command"]


_PING = b"*1\r\n$4\r\nPING\r\n"


class RedisReplyError(Exception):
    """An error reply from Redis, e.g. ``NOSCRIPT ...``, ``OOM ...``, ``LOADING ...``."""


class Script:
    """A Lua script with its SHA1, for ``RespClient.evalsha``."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


def encode_command(args: tuple[Any, ...] | list[Any]) -> bytes:
    """One command as a RESP array of bulk strings (str as UTF-8, int/float as decimal)."""
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):
            raise TypeError("Redis has no booleans: send 0/1 or a string")
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(out)


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The ``ssl.SSLContext`` redis-py's asyncio client uses for these ``ssl_*`` options.

    ``options`` are the ``ssl_*`` entries of ``redis.connection.parse_url(url)`` (strings as the
    URL spells them, e.g. ``{"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required"}``).
    redis-py's ``SSLConnection`` supplies the defaults (certificate and hostname verified against
    the system CAs) and the meaning of each option (``ssl_cert_reqs=none`` also turns the hostname
    check off), and its ``RedisSSLContext`` builds the context, so both clients always agree.

    Raises:
        ValueError: an option redis-py's asyncio client does not take (the OCSP ones among them)
            or an invalid value, e.g. ``ssl_cert_reqs=maybe``.
        OSError: a CA, certificate or key file cannot be read (``ssl.SSLError`` if unusable).
    """
    try:
        # Constructing a connection opens nothing; it only normalises the options.
        spec = AsyncSSLConnection(**options).ssl_context
    except (TypeError, RedisError) as exc:
        raise ValueError(f"Redis URL: unusable TLS option: {exc}") from None
    return spec.get()


class _Connection(asyncio.Protocol):
    """One Redis connection: writes coalesced per loop iteration, replies matched in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=RedisReplyError)
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._deadlines: deque[float] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.last_reply = loop.time()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.last_reply = self.loop.time()
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        deadlines = self._deadlines
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(ConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiters:
                self._fail(ConnectionError("Redis sent a reply nobody asked for"))
                return
            waiter = waiters.popleft()
            deadlines.popleft()
            if not waiter.done():
                if isinstance(reply, RedisReplyError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"Redis connection lost: {exc}" if exc else "Redis closed the connection"))

    # API
    def send(self, payload: bytes, deadline: float) -> asyncio.Future[Any]:
        """Queue one encoded command; the future gets its reply (or an exception)."""
        waiter = self.loop.create_future()
        if self.closed:
            waiter.set_exception(ConnectionError("Redis connection closed"))
            return waiter
        self._waiters.append(waiter)
        self._deadlines.append(deadline)
        self._out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        if self._timer is None:
            self._timer = self.loop.call_at(deadline, self._check_deadline)
        return waiter

    @property
    def busy(self) -> bool:
        """Commands are waiting for replies."""
        return bool(self._waiters)

    def close(self) -> None:
        self._fail(ConnectionError("Redis client closed"))

    # internals
    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or self.transport is None:
            return
        out = self._out
        self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._deadlines:
            return
        oldest = self._deadlines[0]
        if oldest <= self.loop.time():
            self._fail(TimeoutError("Redis did not answer in time"))
        else:
            self._timer = self.loop.call_at(oldest, self._check_deadline)

    def _fail(self, exc: Exception) -> None:
        """Close the connection and fail every command still waiting on it."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        waiters, self._waiters = self._waiters, deque()
        self._deadlines.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    """An asyncio Redis client over one pipelined connection (see the module docstring).

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL, parsed by redis-py's ``parse_url``:
            user, password and db (path or ``?db=``) are honoured, and for ``rediss://`` the
            ``ssl_*`` query options, as redis-py reads them; other options (``socket_timeout``,
            ...) are not, the arguments below bound time instead.
        connect_timeout: bound on opening the connection (and authenticating), seconds.
        timeout: bound on one command, from the call to its reply (connecting included), seconds.
        health_check_interval: a connection idle for longer is PINGed (within ``connect_timeout``)
            before the next command, and replaced if it does not answer.

    Raises:
        ValueError: the URL is not one redis-py accepts, a unix URL has no path, or its TLS
            options are invalid or given on a URL without TLS.
        OSError: a ``rediss://`` URL's CA, certificate or key file cannot be loaded.
    """

    def __init__(
        self, url: str, connect_timeout: float = 0.3, timeout: float = 0.6, health_check_interval: float = 10.0
    ) -> None:
        opts = parse_url(url)
        self._host: str = opts.get("host", "localhost")
        self._port: int = int(opts.get("port", 6379))
        self._path: str | None = opts.get("path")
        if self._path is None and opts.get("connection_class") is UnixDomainSocketConnection:
            raise ValueError(f"unix socket URL without a path: {url}")
        tls_options = {k: v for k, v in opts.items() if k.startswith("ssl_")}
        self._ssl: ssl.SSLContext | None = None
        if opts.get("connection_class") is SSLConnection:
            # Built (and its files read) once, here: a wrong path fails at start-up, not per webhook.
            self._ssl = _tls_context(tls_options)
        elif tls_options:
            # Dropping them would connect in plain text where TLS was asked for.
            raise ValueError(f"Redis URL: TLS options without rediss://: {', '.join(sorted(tls_options))}")
        self._db = int(opts.get("db", 0) or 0)
        self._username: str | None = opts.get("username")
        self._password: str | None = opts.get("password")
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.health_check_interval = health_check_interval
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def execute(self, *args: Any) -> Any:
        """Run one command; returns its reply (bytes, int, list, None).

        Raises:
            RedisReplyError: Redis answered with an error.
            TimeoutError: no connection or no reply within the bounds.
            ConnectionError: the connection failed or was closed.
            ssl.SSLError: the TLS handshake failed, e.g. ``ssl.SSLCertVerificationError`` for a
                server certificate not signed by a trusted CA.
        """
        return await self._call(args, asyncio.get_running_loop().time() + self.timeout)

    async def evalsha(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        """``EVALSHA`` the script, falling back to ``EVAL`` (which caches it) on ``NOSCRIPT``; both
        within one ``timeout``."""
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            return await self._call((b"EVALSHA", script.sha, len(keys), *keys, *args), deadline)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._call((b"EVAL", script.source, len(keys), *keys, *args), deadline)

    async def _call(self, args: tuple[Any, ...], deadline: float) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect(deadline)
        elif not conn.busy and conn.loop.time() - conn.last_reply > self.health_check_interval:
            conn = await self._check(conn, deadline)
        return await conn.send(encode_command(args), deadline)

    async def _check(self, conn: _Connection, deadline: float) -> _Connection:
        """PING a connection idle for a while before trusting it with a command (a peer or a NAT
        may have dropped it without a word); reconnect if it does not answer."""
        now = conn.loop.time()
        conn.last_reply = now  # one check at a time
        try:
            await conn.send(_PING, min(deadline, now + self.connect_timeout))
            return conn
        except (ConnectionError, TimeoutError):
            conn.close()
            return await self._connect(deadline)

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _connect(self, deadline: float) -> _Connection:
        """The open connection, opening one (shared by concurrent callers) if needed."""
        if self._closed:
            raise ConnectionError("Redis client closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            # Retrieve the outcome even when every caller gave up waiting (no "never retrieved").
            self._connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
        task = self._connecting
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            # shield: a caller giving up must not cancel the attempt others share.
            return await asyncio.wait_for(asyncio.shield(task), max(remaining, 0.0))
        except TimeoutError:
            raise TimeoutError("Redis connection not ready in time") from None

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                conn: _Connection
                if self._path is not None:
                    _, conn = await loop.create_unix_connection(lambda: _Connection(loop), self._path)
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(loop), self._host, self._port, ssl=self._ssl
                    )
                setup: list[tuple[Any, ...]] = []
                if self._password is not None:
                    auth = (self._username, self._password) if self._username else (self._password,)
                    setup.append((b"AUTH", *auth))
                if self._db:
                    setup.append((b"SELECT", self._db))
                deadline = loop.time() + self.connect_timeout
                try:
                    for reply in [conn.send(encode_command(cmd), deadline) for cmd in setup]:
                        await reply
                except BaseException:
                    conn.close()
                    raise
        except TimeoutError:
            raise TimeoutError(f"Redis connect timed out after {self.connect_timeout} s") from None
        finally:
            self._connecting = None
        if self._closed:
            conn.close()
            raise ConnectionError("Redis client closed")
        self._conn = conn
        return conn
