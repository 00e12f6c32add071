"""Receiver settings: how Label Studio's changes come in (webhooks into the change log, the
reconciliation and checks that catch what webhooks missed), the receiver's auth and HTTP limits,
and every process's logs and worker metrics."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from labelloop.settings.env import also_unprefixed


class ReceiverFields(BaseModel):
    """Webhooks and reconciliation, Basic auth, HTTP limits, logging and metrics.

    A field group of ``Settings``, never built alone.
    """

    reconcile_interval_s: int = Field(
        300, ge=1, description="Seconds between reconciliations with Label Studio (Celery beat)."
    )
    dataset_verify_s: float = Field(
        3600.0,
        ge=0,
        description="Dataset rebuilds apply the recorded webhooks instead of asking Label Studio, but export "
        "the project and compare it with the stored tasks, task by task, at least this often (seconds; 0: every "
        "build).",
    )
    change_log_project_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="Redis memory (bytes, MEMORY USAGE) one project's change log may hold; past it the receiver "
        "drops that log and marks a gap, so the next dataset build reads Label Studio (nothing lost; 0: no "
        "budget, only the 2,000-entry cap).",
    )

    webhook_secret: SecretStr | None = Field(
        None, description="Shared secret Label Studio's webhooks must send in the webhook secret header."
    )
    webhook_secret_header: str = Field("X-Labelloop-Secret", description="Header that carries the webhook secret.")
    basic_auth_user: str | None = Field(
        None,
        validation_alias=also_unprefixed("basic_auth_user"),
        description="HTTP Basic user for /setup, /predict and START_TRAINING (as set on the ML backend).",
    )
    basic_auth_pass: SecretStr | None = Field(
        None,
        validation_alias=also_unprefixed("basic_auth_pass"),
        description="HTTP Basic password for /setup, /predict and START_TRAINING.",
    )
    auth_health: bool = Field(False, description="Also require Basic auth on /, /health and /metrics.")
    max_body_bytes: int = Field(
        2 * 1024 * 1024,
        ge=1024,
        description="Largest accepted request body (bytes); Label Studio's annotation webhooks are a few KiB, "
        "a bulk one (ANNOTATIONS_CREATED) grows with its tasks.",
    )
    max_concurrent_requests: int = Field(
        64,
        ge=1,
        description="Requests the receiver handles at once (per process; idle connections do not count); "
        "503 with Retry-After beyond, and a refused webhook marks the change logs.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a whole request head (`labelloop serve`); "
        "the connection is closed after it.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a request has, once its head is in, to send its whole body; 408 after it and its "
        "place in flight is free again (a refused webhook marks the change logs).",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        [],
        description="Host header names the receiver answers (comma-separated, `*`: any); empty: any "
        "when it listens beyond loopback, else only localhost, 127.0.0.1 and [::1] (DNS rebinding).",
    )
    redis_timeout_s: float = Field(
        0.3, gt=0, description="Receiver's Redis connect/command timeout (seconds); 503 after it."
    )

    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of a worker's Prometheus /metrics (0: off); `--metrics-port` overrides."
    )

    log_level: str = Field("INFO", description="Log level for labelloop and the libraries it routes.")
    log_json: bool | None = Field(None, description="JSON logs; default: JSON unless stderr is a TTY.")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: object) -> object:
        if isinstance(v, str):
            return [h.strip().lower() for h in v.split(",") if h.strip()]
        return v
