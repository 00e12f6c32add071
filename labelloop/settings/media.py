"""Label Studio settings: where Label Studio is and its token (``LABEL_STUDIO_URL``,
``LABEL_STUDIO_API_KEY``, as ML backends read them), its folders when mounted here, and how task
media (images, videos) are downloaded."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

from labelloop.settings.env import also_unprefixed


class MediaFields(BaseModel):
    """The Label Studio connection and media downloads (``LABELLOOP_MEDIA_*``).

    A field group of ``Settings``, never built alone.
    """

    label_studio_url: str | None = Field(
        None,
        validation_alias=also_unprefixed("label_studio_url"),
        description="Label Studio base URL, e.g. http://localhost:8080.",
    )
    label_studio_api_key: SecretStr | None = Field(
        None,
        validation_alias=also_unprefixed("label_studio_api_key"),
        description="Label Studio legacy API token or personal access token.",
    )

    local_files_document_root: Path | None = Field(
        None,
        validation_alias=also_unprefixed("local_files_document_root"),
        description="Label Studio's LOCAL_FILES_DOCUMENT_ROOT when mounted here: Local Storage images are read "
        "from disk instead of downloaded.",
    )
    label_studio_media_dir: Path | None = Field(
        None,
        validation_alias=also_unprefixed("label_studio_media_dir"),
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

    @field_validator("label_studio_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("LABEL_STUDIO_URL must start with http:// or https://")
        return v

    @property
    def api_key(self) -> str | None:
        """The Label Studio token as plain text, or None."""
        return self.label_studio_api_key.get_secret_value() if self.label_studio_api_key else None
