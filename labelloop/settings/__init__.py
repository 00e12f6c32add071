"""labelloop settings: one typed object, read from the environment at entry points only.

Every field reads ``LABELLOOP_<FIELD>``; the Label Studio connection also reads ``LABEL_STUDIO_URL``
and ``LABEL_STUDIO_API_KEY`` (a legacy token or a personal access token), as ML backends do.
README's table of them: ``service.settings_table``.

``Settings`` is composed of field groups, one module each: ``storage`` (Redis, registry, cache),
``media`` (Label Studio, media downloads), ``training`` (trigger, recipe, locks, gate), ``serving``
(pre-annotation, ``/predict``, video, active learning, pseudo-labels) and ``receiver`` (webhooks,
reconciliation, auth, HTTP limits, logs). The groups are plain pydantic models; only ``Settings``
reads the environment, so a group's field is ``LABELLOOP_<FIELD>`` like any other (no nesting).
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from labelloop.paths import Paths
from labelloop.settings.env import ENV_PREFIX
from labelloop.settings.media import MediaFields
from labelloop.settings.receiver import ReceiverFields
from labelloop.settings.serving import BUILTIN_TRACKERS, ServingFields
from labelloop.settings.storage import StorageFields
from labelloop.settings.training import TrainingFields

__all__ = ["BUILTIN_TRACKERS", "ENV_PREFIX", "Paths", "Settings"]


# pydantic lists inherited fields from the last base to the first, so the groups are written
# bottom-up: ``model_fields`` (README's table, ``labelloop config``) keeps the order storage, media,
# training, serving, receiver.
class Settings(ReceiverFields, ServingFields, TrainingFields, MediaFields, StorageFields, BaseSettings):
    """Configuration of the receiver, the workers and the CLI.

    Defaults work on a laptop: Redis on localhost, models and caches under ``./var``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True, env_ignore_empty=True
    )
