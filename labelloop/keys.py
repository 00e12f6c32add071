"""Every Redis key labelloop writes or reads, in one place (the receiver's script, the workers
and the command line spell them from here).

Per project (``labelloop:project:<id>:...``): ``changes`` (stream) and ``changes:seq`` (its
counter, ``labelloop.events.changes``), ``seen`` (the ledger's hash) and ``deleted`` (its tombstones,
``labelloop.events.ledger``), ``reconcile`` (the reconciliation lock, ``labelloop.jobs.jobs``),
``trigger`` (hash), ``training`` (the lock), ``training:owner`` (the delivery running it),
``run:<run_id>`` (a run's deliveries) and ``given_up`` (``labelloop.jobs.trigger``), ``progress`` and
``preannotate`` (``labelloop.jobs.progress``), ``preannotate:generation`` (``labelloop.serving.preannotate``),
``first_picks:queued`` (``service.app``'s ``/setup``),
``current``, ``servers`` and ``warm:<version>`` (``labelloop.registry.notify``). Global:
``labelloop:projects`` (known projects), ``labelloop:events`` (the event stream),
``labelloop:predict:alive:<host>:<pid>`` (a predict process's heartbeat, a key with a TTL,
``labelloop.serving.presence``), ``labelloop:delivery:<sha1>`` (deduplication),
``labelloop:webhooks:refused`` (webhooks refused before their project was known,
``service.webhook``) and the pub/sub channel ``labelloop:versions``. Kombu's own:
``unacked_index`` (``UNACKED_INDEX``, the Redis transport's sorted set of unacknowledged
deliveries scored by delivery time), ``unacked`` (``UNACKED``, the hash of those deliveries'
messages) and one list per queue and priority (``queue_lists``), read by ``labelloop.jobs.locks``.
"""

from __future__ import annotations

import hashlib

PROJECTS = "labelloop:projects"
EVENTS = "labelloop:events"
VERSIONS_CHANNEL = "labelloop:versions"
DELIVERY_PREFIX = "labelloop:delivery:"
# Counter of webhooks refused before their project could be read (401 before the body, 413): any
# project's change log may miss one (``labelloop.events.changes``).
WEBHOOKS_REFUSED = "labelloop:webhooks:refused"
# kombu.transport.redis.Channel.unacked_index_key (no global_keyprefix): a running training keeps
# its own entry's score fresh, so only a dead worker's delivery ages past the visibility timeout.
UNACKED_INDEX = "unacked_index"
# kombu.transport.redis.Channel.unacked_key: delivery tag -> JSON [message, exchange, routing key].
UNACKED = "unacked"
# kombu.transport.redis: a queue's messages of priority p > 0 wait in "<queue>\x06\x16<p>".
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps a queue's waiting messages in, one per priority step."""
    return [queue if p == 0 else f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS]


def project(project_id: int, what: str) -> str:
    """``labelloop:project:<id>:<what>``; ``project_id`` must be an integer id."""
    return f"labelloop:project:{int(project_id)}:{what}"


def changes(project_id: int) -> str:
    return project(project_id, "changes")


def changes_seq(project_id: int) -> str:
    return project(project_id, "changes:seq")


def seen(project_id: int) -> str:
    return project(project_id, "seen")


def deleted(project_id: int) -> str:
    return project(project_id, "deleted")


def reconcile_lock(project_id: int) -> str:
    return project(project_id, "reconcile")


def trigger(project_id: int) -> str:
    return project(project_id, "trigger")


def training_lock(project_id: int) -> str:
    return project(project_id, "training")


def training_owner(project_id: int) -> str:
    return project(project_id, "training:owner")


def run(project_id: int, run_id: str) -> str:
    """A training run's record (hash: ``started``, deliveries that began; ``finished``)."""
    return project(project_id, f"run:{run_id}")


def given_up(project_id: int) -> str:
    return project(project_id, "given_up")


def progress(project_id: int) -> str:
    return project(project_id, "progress")


def preannotation(project_id: int) -> str:
    return project(project_id, "preannotate")


def first_picks_queued(project_id: int) -> str:
    """Set while a first-picks job of the project is queued recently (``/setup`` sends no other)."""
    return project(project_id, "first_picks:queued")


def selection_queued(project_id: int, digest: str) -> str:
    """Set while a ``/predict`` selection (``digest``: ``selection_digest`` of its task ids) waits on
    the pre-annotation queue, so Label Studio's repeated "Retrieve Predictions" queues it once."""
    return project(project_id, f"selection:{digest}")


def selection_digest(task_ids: list[int]) -> str:
    """A short digest of a selection's task ids, whatever their order.

    Examples:
        >>> selection_digest([3, 1, 2]) == selection_digest([1, 2, 3])
        True
    """
    return hashlib.sha256(",".join(map(str, sorted(task_ids))).encode()).hexdigest()[:16]


def preannotation_generation(project_id: int) -> str:
    """Counter of the project's pre-annotation runs: a run goes on only while it holds the newest."""
    return project(project_id, "preannotate:generation")


def current(project_id: int) -> str:
    return project(project_id, "current")


def servers(project_id: int) -> str:
    return project(project_id, "servers")


def warm(project_id: int, version: str) -> str:
    return project(project_id, f"warm:{version}")


def predict_alive(identity: str) -> str:
    """The heartbeat key of one predict process (``identity``: ``<host>:<pid>``); it expires when
    the process stops beating."""
    return f"labelloop:predict:alive:{identity}"


def delivery(digest: str) -> str:
    """The deduplication key of one delivery (``digest``: hex SHA-1 of its identity, or "-")."""
    return DELIVERY_PREFIX + digest
