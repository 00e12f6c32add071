"""The process's Redis clients per role (labelloop.redis_client): one per URL and role, with the role's timeouts."""

from __future__ import annotations

from labelloop import redis_client
from labelloop.serving.presence import Presence


def test_each_role_has_its_timeouts_and_one_client_per_process() -> None:
    """A role's client connects and reads within the role's seconds; asking again gives the same client."""
    url = "redis://127.0.0.1:1/0"  # never connected to: building a client opens no connection
    for role, (connect_s, socket_s) in redis_client.TIMEOUTS.items():
        client = redis_client.client(url, role)
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (connect_s, socket_s), role
        assert redis_client.client(url, role) is client
    assert redis_client.TIMEOUTS["predict"] == (1.0, 2.0)


def test_a_predict_process_reports_on_the_predict_client() -> None:
    """The heartbeat and warm-version reports use the ``predict`` client (give up after 2 s inside
    ``/predict``), not a client of their own nor the worker's (10 s)."""
    presence = Presence("host:1")
    presence.connect("redis://127.0.0.1:1/1")
    assert presence._redis is redis_client.client("redis://127.0.0.1:1/1", "predict")
