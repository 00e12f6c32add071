"""labelloop settings: one typed object, read from the environment at entry points only.

Every field reads ``LABELLOOP_<FIELD>``; the Label Studio connection also reads ``LABEL_STUDIO_URL``
and ``LABEL_STUDIO_API_KEY`` (a legacy token or a personal access token), as ML backends do.
README's table of them: ``service.settings_table``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from labelloop.paths import Paths

ENV_PREFIX = "LABELLOOP_"
#: Ultralytics' own tracker configs (``ultralytics/cfg/trackers``).
BUILTIN_TRACKERS = ("bytetrack.yaml", "botsort.yaml")


class Settings(BaseSettings):
    """Configuration of the receiver, the workers and the CLI.

    Defaults work on a laptop: Redis on localhost, models and caches under ``./var``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the Celery broker, results and events.")
    models_dir: Path = Field(Path("var/models"), description="Model registry root: the source of truth for versions.")
    cache_dir: Path = Field(Path("var/cache"), description="Downloaded images and training run directories.")
    cache_max_bytes: int = Field(
        10 * 1024**3,
        ge=0,
        description="Size cap of the image cache (<cache_dir>/images, bytes); the least recently used images are "
        "removed above it (0: no cap). A target above the working set: images a running build holds or a dataset "
        "links are never removed, so set it above the datasets' total size.",
    )
    keep_versions: int = Field(
        10,
        ge=1,
        description="Model versions kept per project: the newest N, plus the served one and those the next N "
        "rollbacks serve; older versions (rejected ones included) are deleted after each publish.",
    )

    label_studio_url: str | None = Field(
        None,
        validation_alias=AliasChoices(f"{ENV_PREFIX}LABEL_STUDIO_URL", "LABEL_STUDIO_URL", "label_studio_url"),
        description="Label Studio base URL, e.g. http://localhost:8080.",
    )
    label_studio_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(
            f"{ENV_PREFIX}LABEL_STUDIO_API_KEY", "LABEL_STUDIO_API_KEY", "label_studio_api_key"
        ),
        description="Label Studio legacy API token or personal access token.",
    )

    local_files_document_root: Path | None = Field(
        None,
        validation_alias=AliasChoices(
            f"{ENV_PREFIX}LOCAL_FILES_DOCUMENT_ROOT", "LOCAL_FILES_DOCUMENT_ROOT", "local_files_document_root"
        ),
        description="Label Studio's LOCAL_FILES_DOCUMENT_ROOT when mounted here: Local Storage images are read "
        "from disk instead of downloaded.",
    )
    label_studio_media_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices(
            f"{ENV_PREFIX}LABEL_STUDIO_MEDIA_DIR", "LABEL_STUDIO_MEDIA_DIR", "label_studio_media_dir"
        ),
        description="Label Studio's media folder (<LABEL_STUDIO_BASE_DATA_DIR>/media) when mounted here: uploaded "
        "images are read from disk instead of downloaded.",
    )
    media_allow_hosts: str = Field(
        "",
        description="Comma-separated hosts (`host` or `host:port`) http(s) task image URLs may point at, "
        "besides Label Studio's.",
    )
    media_timeout_s: float = Field(30.0, gt=0, description="Time limit of one image download (seconds).")
    media_retries: int = Field(
        3, ge=0, le=10, description="Retries of an image download after a connect error, a 5xx or a 429."
    )
    media_threads: int = Field(8, ge=1, le=64, description="Concurrent image downloads.")
    media_max_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="Largest image downloaded (bytes).")
    media_video_max_bytes: int = Field(
        2 * 1024**3, ge=1024, description="Largest video downloaded (bytes; streamed to disk, never held in memory)."
    )
    media_video_timeout_s: float = Field(600.0, gt=0, description="Time limit of one video download (seconds).")

    train_every_n: int = Field(10, ge=1, description="Train after this many new annotation events per project.")
    base_model: str = Field(
        "auto",
        description="Weights a project's first version starts from: an Ultralytics asset name (yolo26n.pt, "
        "yolo11s.pt, ...), a local .pt, a model YAML, or `auto` (the installed ultralytics' recommended nano "
        "detection model). Offline, an asset not on disk trains from its model YAML instead.",
    )
    offline: bool | None = Field(
        None, description="Never download base models (unset: download when the machine is online)."
    )
    epochs: int | None = Field(
        None, ge=1, description="Training epochs per run (unset: from the recipe's optimizer-step budget)."
    )
    imgsz: int | None = Field(
        None, ge=32, description="Training and inference image size in pixels (unset: from the project's images)."
    )
    batch: int | None = Field(None, ge=1, description="Training batch size (unset: from the train split's size).")
    nbs: int | None = Field(
        None, ge=1, description="Ultralytics' nominal batch for gradient accumulation (unset: from the data)."
    )
    train_time_s: float | None = Field(
        None, gt=0, description="Wall-clock budget of one training (seconds; unset: 150 on CPU, 1800 on a GPU)."
    )
    freeze: int | None = Field(
        None,
        ge=0,
        description="Layers to freeze (unset: the backbone when fine-tuning pretrained weights on few images).",
    )
    mosaic: float | None = Field(None, ge=0.0, le=1.0, description="Mosaic augmentation probability (unset: 1.0).")
    close_mosaic: int | None = Field(
        None, ge=0, description="Final epochs without mosaic (unset: the last ~10% of the epochs)."
    )
    checkpoint: Literal["best", "last"] | None = Field(
        None, description="Checkpoint a training publishes (unset: last below 20 validation images, else best)."
    )
    device: str = Field("", description="Ultralytics device ('' picks CUDA when available, else 'cpu').")
    dataloader_workers: int = Field(2, ge=0, description="DataLoader worker processes during training.")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Fraction of tasks in the validation split.")
    min_val_images: int = Field(1, ge=1, description="Minimum validation images per dataset.")
    video_frame_stride: int = Field(
        5,
        ge=1,
        description="Video projects: every Nth frame of a video's annotated span (and every keyframe) becomes a "
        "training image; consecutive frames are near-duplicates.",
    )
    seed: int = Field(0, description="Training seed.")
    train_time_limit_s: int = Field(
        4 * 3600,
        ge=10,
        description="Time limit of one training run, dataset build, training and validation together (seconds): "
        "over it the run is stopped, cleaned up and the follow-up started (Celery's soft time limit).",
    )
    train_lock_ttl_s: int = Field(
        30,
        ge=3,
        description="TTL of a running training's project lock (seconds), renewed every third of it for the whole "
        "run: a dead worker's lock is free this long after it died.",
    )
    train_lock_orphan_s: int = Field(
        120,
        ge=1,
        description="A project's training lock that no delivery holds and whose run has no message waiting (in the "
        "train queue or a worker; revoked, purged or never sent) is reaped by the reconciliation once its run has "
        "been due this long (seconds); `labelloop status`, `doctor` and labelloop_project_locks_without_owner show "
        "it meanwhile.",
    )
    train_redelivery_s: int = Field(
        45,
        ge=10,
        description="A training whose worker died is redelivered this long after its last sign of life (seconds; "
        "the broker's visibility timeout, which running trainings keep from expiring).",
    )
    train_max_deliveries: int = Field(
        3,
        ge=1,
        description="Deliveries of one training run that may die with their worker before the run is given up.",
    )
    train_quiet_s: float = Field(
        15.0,
        ge=0,
        description="A training due after annotations waits, before it reads the data, until no annotation arrived "
        "for this long (seconds; 0: no wait), so a burst of annotations makes one version. START_TRAINING never "
        "waits.",
    )
    train_max_delay_s: float = Field(
        90.0,
        ge=0,
        description="Longest such wait, from when the training became due (seconds; 0: no wait); it is added to "
        "the train task's Celery time limits.",
    )
    promotion_metric: str = Field(
        "map50_95", pattern="^(map50_95|map50|precision|recall)$", description="Metric of the promotion gate."
    )
    promotion_margin: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="A candidate is promoted unless its metric is worse by more than this plus the validation "
        "split's noise (see README, How the promotion gate decides).",
    )
    preannotate: bool = Field(True, description="After a promotion, predict every unlabeled task into Label Studio.")
    preannotate_batch: int = Field(16, ge=1, description="Tasks per pre-annotation batch.")
    set_project_model_version: bool = Field(
        True, description="After pre-annotation, make the new version the project's displayed model version."
    )
    predict_timeout_s: float = Field(
        90.0,
        gt=0,
        description="How long /predict waits for a predict worker; a predict task not started by then expires "
        "(workers discard it) and /predict answers 503.",
    )
    predict_batch: int = Field(
        16,
        ge=1,
        description="Tasks of one /predict predicted per model call (one chunk: its images downloaded and "
        "predicted together); bounds a predict worker's memory whatever the selection's size.",
    )
    predict_deadline_s: float = Field(
        60.0,
        gt=0,
        description="A predict worker starts no further chunk of a /predict after this many seconds and answers "
        "with what is ready (the other tasks get no prediction; Label Studio retrieves them next time); shortened "
        "to 0.8 of the time the receiver still waits (LABELLOOP_PREDICT_TIMEOUT_S from when it queued the task).",
    )
    predict_max_tasks: int = Field(
        256,
        ge=1,
        description="Tasks one /predict may carry (a Data Manager 'Retrieve Predictions' selection); more is "
        "refused at once with 413: the pre-annotation queue predicts a project's unlabeled tasks.",
    )
    predict_cache_projects: int = Field(
        4,
        ge=1,
        description="Projects whose models one predict process keeps loaded (least recently predicted dropped "
        "first); each keeps its served version and up to 2 recent ones for instant rollback.",
    )
    predict_conf: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Confidence threshold of a prediction's candidate boxes (what its score is computed over) and "
        "the prior of each version's display threshold (see LABELLOOP_SHOW_CONF).",
    )
    video_tracker: str = Field(
        "bytetrack.yaml",
        description="Ultralytics tracker that links a video's detections into tracks (pre-annotations): "
        "bytetrack.yaml, botsort.yaml, or the path of a tracker YAML of your own (Ultralytics' format, "
        "https://docs.ultralytics.com/modes/track/#tracker-selection).",
    )
    video_keyframe_tolerance: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="A predicted track keeps a keyframe where Label Studio's linear interpolation between kept "
        "keyframes would move its box by more than this (percent of the frame).",
    )
    show_conf: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Score threshold of the regions shown by /predict and pre-annotations, for every version; "
        "unset: each version's own, chosen on its validation split to minimise edits (manifest show_conf), else "
        "predict_conf. The prediction score always counts the regions above predict_conf.",
    )
    score_strategy: Literal["least_confidence", "margin", "entropy"] = Field(
        "least_confidence",
        description="How a prediction's score ranks what to label next: least_confidence, margin or entropy "
        "(score = 1 - informativeness; low first = most informative first).",
    )
    informative_tab: bool = Field(
        True,
        description="After a promotion, keep a Data Manager tab 'labelloop: most informative first' in the "
        "project (unlabeled tasks, lowest prediction score first).",
    )
    label_mistakes: bool = Field(
        True,
        description="After a pre-annotation, score each annotated task (detection) with the newest version not "
        "trained on its annotation (cleanlab ObjectLab), write labelloop_label_quality / labelloop_suspected into the "
        "task data and keep a Data Manager tab 'labelloop: possible label mistakes' (lowest score first).",
    )
    pseudo_labels: bool = Field(
        False,
        description="Self-training (detect): the served version's confident predictions on unlabeled tasks join "
        "a training's train split as pseudo-labels (see README, How it trains). Off until the benchmark shows "
        "it helps.",
    )
    pseudo_conf: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="An unlabeled image is pseudo-labelled only when every region predicted on it at "
        "LABELLOOP_PREDICT_CONF or more is at least this confident.",
    )
    pseudo_ratio: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="Pseudo-labelled images per human-labelled train image, at most (most confident first).",
    )
    pseudo_pool: int = Field(
        500,
        ge=1,
        description="Unlabeled tasks predicted per training for pseudo-labels, at most (4 per pseudo-label "
        "allowed, up to this).",
    )
    set_sampling: bool = Field(
        True,
        description="Set the project's sampling to 'Uncertainty sampling' once labelloop's predictions are in, so "
        "Label Studio's label stream serves labelloop's order (the previous sampling is kept for "
        "`labelloop sampling restore`).",
    )
    first_picks: bool = Field(
        True,
        description="Before the first version, order a connected project's unlabeled tasks by coverage of the "
        "images (predictions of model version labelloop-first-picks with a score and a cluster).",
    )

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
        validation_alias=AliasChoices(f"{ENV_PREFIX}BASIC_AUTH_USER", "BASIC_AUTH_USER", "basic_auth_user"),
        description="HTTP Basic user for /setup, /predict and START_TRAINING (as set on the ML backend).",
    )
    basic_auth_pass: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(f"{ENV_PREFIX}BASIC_AUTH_PASS", "BASIC_AUTH_PASS", "basic_auth_pass"),
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

    @field_validator("label_studio_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("LABEL_STUDIO_URL must start with http:// or https://")
        return v

    @field_validator("video_tracker")
    @classmethod
    def _tracker(cls, v: str) -> str:
        """Ultralytics' two tracker names, or an existing ``.yaml``/``.yml`` file (an operator's
        setting: a file on this machine, never anything from Label Studio or the network)."""
        v = v.strip()
        if v in BUILTIN_TRACKERS:
            return v
        path = Path(v).expanduser()
        if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
            raise ValueError(
                f"LABELLOOP_VIDEO_TRACKER must be one of {BUILTIN_TRACKERS} or an existing tracker YAML file"
            )
        return str(path.absolute())

    @property
    def api_key(self) -> str | None:
        """The Label Studio token as plain text, or None."""
        return self.label_studio_api_key.get_secret_value() if self.label_studio_api_key else None

    @property
    def paths(self) -> Paths:
        """The registry and cache folders, absolute (``Paths``)."""
        return Paths(Path(self.models_dir).absolute(), Path(self.cache_dir).absolute())
