"""Vitrine's one configuration class: `VITRINE_*` environment variables or a `.env` file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "VITRINE_"
DEFAULT_MODEL = "convnext_base.fb_in22k_ft_in1k"
# Chosen by `vitrine evaluate` on the Flipkart sample (README): the whole photo beats timm's centre crop.
DEFAULT_CROP: Literal["center", "full"] = "full"


class ConfigError(RuntimeError):
    """A setting is missing or wrong; the message names the environment variable."""


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Services
    broker_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/vitrine"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "vitrine"
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    images_bucket: str = "vitrine-listings"
    gradcam_bucket: str = "vitrine-gradcam"

    # Model
    model: str = DEFAULT_MODEL
    weights: Path | None = None
    device: str = "auto"
    # fp32; int8 (CPU only: the Linear layers quantised dynamically, part of the backbone id so
    # int8 and fp32 embeddings never share a clustering); bf16 (CUDA autocast). "auto": bf16 on
    # CUDA, fp32 on CPU. Checked against the device when a worker starts.
    precision: Literal["auto", "fp32", "int8", "bf16"] = "auto"
    # torch's intra-op threads; unset: the CPUs this process may run on (not the host's count,
    # which oversubscribes a container limited to a few of them).
    torch_threads: int | None = Field(None, ge=1, le=1024)
    # Benchmarks only: without weights, embed with random ones instead of refusing to start.
    allow_random_weights: bool = False
    batch_size: int = Field(32, ge=1, le=4096)
    # Grad-CAM keeps activations and gradients of the last stage: smaller batches than embedding.
    explain_batch_size: int = Field(16, ge=1, le=1024)
    # Under light load a listing waits for this timer, not for a full batch: 0.25 s keeps the
    # p95 from publish to suggestion near 0.5 s on a 2-core CPU (docs/performance.md) while
    # batches still fill at a few dozen listings per second.
    flush_interval: float = Field(0.25, gt=0, le=600)
    # `center`: timm's eval transform (resize, centre crop). `full`: the whole photo, padded to a
    # square with its background colour, then resized (see `common.vision.backbone.crop_data_config`).
    crop: Literal["center", "full"] = DEFAULT_CROP
    decode_threads: int = Field(2, ge=1, le=64)
    # `pillow`: decode and prepare photos on the host's CPUs. `device`: JPEGs decoded in batches on
    # the model's device (nvJPEG on CUDA) after the same checks on the host, for GPUs that
    # embed faster than a few cores can decode; other formats still go through Pillow.
    decode: Literal["pillow", "device"] = "pillow"

    # Safe fetching and decoding of listing photos
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(50_000_000, ge=64 * 64)
    max_image_side: int = Field(16_384, ge=64)
    # Deadline for one photo's whole download (every redirect and byte), not for each read.
    fetch_timeout: float = Field(10.0, gt=0, le=300)
    allowed_image_formats: Annotated[list[str], NoDecode] = ["JPEG", "PNG", "WEBP", "BMP", "GIF"]
    # Empty: any public host. Otherwise only these hosts (exact, or a ".suffix" entry).
    fetch_allowed_hosts: Annotated[list[str], NoDecode] = []
    # Hosts that may resolve to private or loopback addresses (an internal image store), each as
    # `host:port` (only that port) or `host` (only ports 80 and 443).
    fetch_private_hosts: Annotated[list[str], NoDecode] = []
    # Buckets of our object store that listing photos may come from, besides `images_bucket`.
    fetch_allowed_buckets: Annotated[list[str], NoDecode] = []
    # Deliveries of a listing that end in a crash or a bug of ours before it fails; our own
    # object store being away never counts.
    max_attempts: int = Field(3, ge=1, le=100)

    # Suggestions
    # Auto-accept only where cross-validation at refit expects at least this precision: the
    # threshold is estimated per clustering version (`common.suggestions.fitting.estimate_threshold`).
    target_precision: float = Field(0.95, gt=0, le=1)
    # A manual override of that estimate; unset, the estimate decides.
    confidence_threshold: float | None = Field(None, ge=0, le=1)
    # Share of confident suggestions that still go to a moderator, chosen by a stable hash of
    # the listing: the only way to measure how often confident suggestions are wrong.
    review_audit_rate: float = Field(0.01, ge=0, le=1)
    # Chosen by `vitrine evaluate` on the Flipkart sample (README): fused is the most accurate and
    # the best calibrated; without a title it is the linear probe, itself ahead of knn.
    suggestion_method: Literal["centroid", "knn", "linear", "title", "fused"] = "fused"
    knn_neighbours: int = Field(15, ge=1, le=1000)
    # Temperature of the softmax over cosine similarities to the centroids.
    centroid_temperature: float = Field(0.05, gt=0, le=10)

    # Refit and sweep
    refit_interval: float = Field(3600.0, gt=0)
    refit_k: int | None = Field(None, ge=2)
    refit_max_vectors: int = Field(200_000, ge=100)
    refit_chunk: int = Field(10_000, ge=100, le=50_000)
    refit_seed: int = 0
    # A listing (or an overlay request) whose message is not known to have reached the broker
    # after this many seconds is sent by the sweep (a publisher that died between commit and send).
    requeue_after: float = Field(60.0, gt=0)
    sweep_interval: float = Field(30.0, gt=0)
    # Seconds a message delivered to a worker may go without the worker renewing it before Redis
    # hands it to another worker: how long a killed worker's messages wait. Live workers renew
    # theirs every quarter of this, however long their batch takes.
    visibility_timeout: float = Field(60.0, ge=10, le=86_400)
    # At most this many overlay requests wait in the explain queue; the rest wait in Postgres.
    explain_queue_limit: int = Field(10_000, ge=1)

    # Operations: Flower and the Prometheus exporter
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    flower_port: int = Field(5555, ge=1, le=65535)
    metrics_port: int = Field(9108, ge=1, le=65535)

    # Review app and HTTP API
    # Seconds a claimed item stays with its moderator before it returns to the queue.
    review_lease_seconds: int = Field(600, ge=10, le=24 * 3600)
    # Signs the review app's session cookies; every instance of the app needs the same one.
    session_secret: SecretStr | None = None
    session_max_age: int = Field(12 * 3600, ge=60)
    # Seconds a failed sign-in waits before it answers, doubled for each recent failure of the name.
    sign_in_delay: float = Field(0.5, ge=0, le=10)

    # Explanations
    explain_sample_rate: float = Field(0.05, ge=0, le=1)
    presign_expiry: int = Field(900, ge=10, le=7 * 24 * 3600)

    @field_validator(
        "allowed_image_formats",
        "fetch_allowed_hosts",
        "fetch_private_hosts",
        "fetch_allowed_buckets",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("allowed_image_formats")
    @classmethod
    def _upper_formats(cls, value: list[str]) -> list[str]:
        return [item.upper() for item in value]

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value == "auto" or value == "cpu" or value == "cuda" or value.startswith("cuda:"):
            return value
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if not value.startswith(("postgresql://", "postgresql+psycopg://")):
            raise ValueError("must be a postgresql:// or postgresql+psycopg:// URL")
        # One driver everywhere: psycopg 3.
        return value.replace("postgresql://", "postgresql+psycopg://", 1)

    @field_validator("broker_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @field_validator("weights", "confidence_threshold", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


def with_environment(env: Mapping[str, str]) -> Settings:
    """The settings as a child process started with `env` laid over this environment will read them."""
    overrides = {
        key.removeprefix(ENV_PREFIX).lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX)
    }
    return load_settings(**overrides)


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; turn pydantic's errors into variable names.

    Each process calls this once, at start, and hands the result to what needs it: nothing in
    the library reads the environment on its own.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            lines.append(f"{ENV_PREFIX}{field.upper()}: {problem['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
