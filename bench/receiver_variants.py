"""The receiver with redis-py's asyncio client in place of its own RESP client, for
``bench.receiver --variants``.

labelloop keeps one hand-written part on the webhook path, ``service.resp.RespClient``: with
redis-py's asyncio client (its connection pool, hiredis parser, ``Script`` objects) the
receiver fell under the 20x-the-official-backend target once the other parts were the
libraries' (Starlette's routing and Celery-built messages; README, Benchmarks). This factory
builds the real receiver (``service.app.create_app``) with redis-py swapped in, so the choice
can be measured again; the record-and-enqueue stays one Lua script.

Run it with ``uvicorn --factory bench.receiver_variants:redis_py`` (settings from the environment).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from labelloop.settings import Settings
from service import app as app_module
from service.resp import RedisReplyError, Script


class _RedisPyClient:
    """``RespClient``'s interface over redis-py's asyncio client (same URL, same timeouts)."""

    def __init__(self, url: str, connect_timeout: float, timeout: float, **_: Any) -> None:
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=connect_timeout, socket_timeout=timeout)
        self._scripts: dict[bytes, Any] = {}

    async def execute(self, *args: Any) -> Any:
        try:
            return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]
        except aioredis.ResponseError as exc:
            raise RedisReplyError(str(exc)) from None

    async def evalsha(self, script: Script, keys: list[Any], args: list[Any]) -> Any:
        registered = self._scripts.get(script.sha)
        if registered is None:
            registered = self._scripts[script.sha] = self.redis.register_script(script.source)
        try:
            return await registered(keys=keys, args=args)
        except aioredis.ResponseError as exc:
            raise RedisReplyError(str(exc)) from None

    async def close(self) -> None:
        await self.redis.aclose()


def redis_py() -> app_module.Receiver:
    # The factory runs in its own uvicorn process: patching the module there is the swap.
    setattr(app_module, "RespClient", _RedisPyClient)  # noqa: B010
    return app_module.create_app(Settings())
