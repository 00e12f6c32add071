"""Superseding pre-annotation runs: a run holds a generation (``Generation.claim``, an INCR of
``labelloop:project:<id>:preannotate:generation``) and goes on only while it holds the newest one,
the registry still serves its version and Label Studio has not deleted the project
(``superseded_by``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
import structlog

from labelloop import keys
from labelloop.events import retired_projects

if TYPE_CHECKING:
    from labelloop.serving.predictor import Predictor

log = structlog.get_logger(__name__)

# A generation key outlives any run (a week); losing it only lets an older run go on until the
# registry's CURRENT moves.
GENERATION_TTL_S = 7 * 86400


@dataclass(frozen=True)
class Generation:
    """A pre-annotation run's claim on its project.

    ``number`` is None when Redis could not be reached: the run then stops only when the
    registry moves on.
    """

    client: redis.Redis
    project_id: int
    number: int | None

    @classmethod
    def claim(cls, client: redis.Redis, project_id: int) -> Generation:
        """Become the project's newest run (older runs stop at their next check)."""
        key = keys.preannotation_generation(project_id)
        try:
            with client.pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, GENERATION_TTL_S)
                number = int(pipe.execute()[0])
        except redis.RedisError as exc:
            log.warning("preannotate_generation_unavailable", project_id=project_id, error=str(exc)[:200])
            number = None
        return cls(client, project_id, number)

    def newest(self) -> bool:
        """Whether no newer run has claimed the project since (True when Redis is unreachable)."""
        if self.number is None:
            return True
        try:
            raw = self.client.get(keys.preannotation_generation(self.project_id))
        except redis.RedisError:
            return True
        return raw is None or int(raw) == self.number


def superseded_by(predictor: Predictor, project_id: int, version: str, generation: Generation | None) -> str | None:
    """Why a run of ``version`` must stop now: "version" (the registry serves another one),
    "newer_run" (a newer run claimed the project), "project_retired" (deleted in Label Studio,
    ``labelloop.events.retired_projects``; known with a generation's Redis only), or None to go on."""
    if predictor.registry.current_name(project_id) != version:
        return "version"
    if generation is not None and not generation.newest():
        return "newer_run"
    if generation is not None and generation.number is not None and _retired(generation.client, project_id):
        return "project_retired"
    return None


def _retired(client: redis.Redis, project_id: int) -> bool:
    try:
        return retired_projects.is_retired(client, project_id)
    except redis.RedisError:
        return False
