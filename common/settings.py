"""Vitrine's configuration: `VITRINE_*` environment variables or a `.env` file, grouped by concern.

Each concern is a small settings class of its own (`settings.embed.batch_size`,
`settings.refit.k`); the variable names stay flat (`VITRINE_BATCH_SIZE`, `VITRINE_REFIT_K`).
`load_settings` reads them all once per process; nothing in the library reads the environment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic.functional_validators import BeforeValidator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

ENV_PREFIX = "VITRINE_"
DEFAULT_MODEL = "convnext_base.fb_in22k_ft_in1k"
# Chosen by `vitrine evaluate` on the Flipkart sample (README): the whole photo beats timm's centre crop.
DEFAULT_CROP: Literal["center", "full"] = "full"
# Variables renamed in this release, still read for one release: old name → new name.
RENAMED_VARIABLES = {"VITRINE_GRADCAM_BUCKET": "VITRINE_OVERLAY_BUCKET"}
# How a suggestion is made (`common.suggestions.model`).
SuggestionMethod = Literal["centroid", "knn", "linear", "title", "fused"]


class ConfigError(RuntimeError):
    """A setting is missing or wrong; the message names the environment variable."""


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


# A list given as one comma-separated variable (`a.example,b.example:8080`).
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


def _group_config(prefix: str = ENV_PREFIX) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=prefix, env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )


class Group(BaseSettings):
    """One concern's settings; `prefix` + the field's name is its variable."""

    model_config = _group_config()

    @classmethod
    def prefix(cls) -> str:
        return str(cls.model_config.get("env_prefix", ENV_PREFIX))

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Variable name → field name."""
        return {f"{cls.prefix()}{name}".upper(): name for name in cls.model_fields}


class ServiceSettings(Group):
    broker_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/vitrine"

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


class StoreSettings(Group):
    """MinIO or any S3 endpoint: listing photos and the explain job's overlays."""

    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "vitrine"
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    # The object store's address as browsers and marketplaces reach it (`https://s3.example.com`,
    # `http://127.0.0.1:9000`), when it differs from `s3_endpoint` (compose: `minio:9000`, a name
    # only its own network resolves). Every presigned URL is signed for this address; empty: for
    # `s3_endpoint`.
    s3_public_endpoint: str = ""
    images_bucket: str = "vitrine-listings"
    # Where publishers (`vitrine publish`, the demo) put listing photos in `images_bucket`: an
    # s3:// image URL of that bucket elsewhere (another listing's overlay, an operator's file) is
    # refused at ingest and never read.
    images_prefix: str = Field("photos/", pattern=r"^([A-Za-z0-9_.-]+/)+$")
    overlay_bucket: str = Field(
        "vitrine-overlays",
        validation_alias=AliasChoices("VITRINE_OVERLAY_BUCKET", "VITRINE_GRADCAM_BUCKET"),
    )
    # Seconds a presigned photo or overlay URL stays valid.
    presign_expiry: int = Field(900, ge=10, le=7 * 24 * 3600)


class BackboneSettings(Group):
    model: str = DEFAULT_MODEL
    weights: Path | None = None
    device: str = "auto"
    # fp32; int8 (CPU only: Linear layers quantised dynamically; in the backbone id, so int8 and
    # fp32 embeddings never share a clustering); bf16 (autocast: CUDA, or a CPU with AVX-512 BF16
    # or AMX, in the id there too). "auto": bf16 on CUDA, fp32 on CPU. Checked at start.
    precision: Literal["auto", "fp32", "int8", "bf16"] = "auto"
    # torch's intra-op threads; unset: the CPUs this process may run on (not the host's count,
    # which oversubscribes a container limited to a few of them).
    torch_threads: int | None = Field(None, ge=1, le=1024)
    # Benchmarks only: without weights, embed with random ones instead of refusing to start.
    allow_random_weights: bool = False
    # `center`: timm's eval transform (resize, centre crop). `full`: the whole photo, padded to a
    # square with its background colour, then resized (see `common.vision.transforms`).
    crop: Literal["center", "full"] = DEFAULT_CROP
    # `pillow`: decode and prepare photos on the host's CPUs. `device`: JPEGs decoded in batches on
    # the model's device (nvJPEG on CUDA) after the same checks on the host, for GPUs that
    # embed faster than a few cores can decode; other formats still go through Pillow.
    decode: Literal["pillow", "device"] = "pillow"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value == "auto" or value == "cpu" or value == "cuda" or value.startswith("cuda:"):
            return value
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    @field_validator("weights", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value


class EmbedSettings(Group):
    batch_size: int = Field(32, ge=1, le=4096)
    # Under light load a listing waits for this timer, not for a full batch: 0.25 s keeps the
    # p95 from publish to suggestion near 0.5 s on a 2-core CPU (docs/performance.md) while
    # batches still fill at a few dozen listings per second.
    flush_interval: float = Field(0.25, gt=0, le=600)
    decode_threads: int = Field(2, ge=1, le=64)
    # Deliveries of a listing that end in a crash or a bug of ours before it fails; our own
    # object store being away never counts.
    max_attempts: int = Field(3, ge=1, le=100)


class PhotoSettings(Group):
    """Safe fetching and decoding of listing photos."""

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(50_000_000, ge=64 * 64)
    max_image_side: int = Field(16_384, ge=64)
    # Deadline for one photo's whole download (every redirect and byte), not for each read.
    fetch_timeout: float = Field(10.0, gt=0, le=300)
    allowed_image_formats: CommaList = ["JPEG", "PNG", "WEBP", "BMP", "GIF"]
    # Empty: any public host. Otherwise only these hosts (exact, or a ".suffix" entry).
    fetch_allowed_hosts: CommaList = []
    # Hosts that may resolve to private or loopback addresses (an internal image store), each as
    # `host:port` (only that port) or `host` (only ports 80 and 443).
    fetch_private_hosts: CommaList = []
    # Buckets of our object store that listing photos may come from, besides `images_bucket`.
    fetch_allowed_buckets: CommaList = []

    @field_validator("allowed_image_formats")
    @classmethod
    def _upper_formats(cls, value: list[str]) -> list[str]:
        return [item.upper() for item in value]


class SuggestionSettings(Group):
    # Auto-accept only where cross-validation at refit expects at least this precision: the
    # threshold is estimated per clustering version (`common.suggestions.policy`).
    target_precision: float = Field(0.95, gt=0, le=1)
    # A manual override of that estimate; unset, the estimate decides.
    confidence_threshold: float | None = Field(None, ge=0, le=1)
    # Share of confident suggestions that still go to a moderator, chosen by a stable hash of
    # the listing: the only way to measure how often confident suggestions are wrong.
    review_audit_rate: float = Field(0.01, ge=0, le=1)
    # Chosen by `vitrine evaluate` on the Flipkart sample (README): fused is the most accurate and
    # the best calibrated; without a title it is the linear probe, itself ahead of knn.
    suggestion_method: SuggestionMethod = "fused"
    knn_neighbours: int = Field(15, ge=1, le=1000)
    # Temperature of the softmax over cosine similarities to the centroids.
    centroid_temperature: float = Field(0.05, gt=0, le=10)

    @field_validator("confidence_threshold", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value


class RefitSettings(Group):
    model_config = _group_config(ENV_PREFIX + "REFIT_")

    interval: float = Field(3600.0, gt=0)
    k: int | None = Field(None, ge=2)
    # Cold start: with no clustering yet, the sweep asks for the first refit as soon as this many
    # embedded listings have a label; until then listings wait as `embedded`. Later refits follow
    # `interval`. 30 is enough for a first, rough clustering that the next refit replaces.
    first_after: int = Field(30, ge=2)
    max_vectors: int = Field(200_000, ge=100)
    # Rows read per step wherever the corpus is walked (refit, re-suggesting, the sweep's reads).
    chunk: int = Field(10_000, ge=100, le=50_000)
    seed: int = 0


class DeliverySettings(Group):
    # A listing (or an overlay request) whose message is not known to have reached the broker
    # after this many seconds is sent by the sweep (a publisher that died between commit and send).
    requeue_after: float = Field(60.0, gt=0)
    sweep_interval: float = Field(15.0, gt=0)
    # Seconds a message delivered to a worker may go without the worker renewing it before Redis
    # hands it to another worker: how long a killed worker's messages wait. Live workers renew
    # theirs every quarter of this, however long their batch takes.
    visibility_timeout: float = Field(60.0, ge=10, le=86_400)
    # Webhooks (`common.webhooks`): seconds between the sender's looks for due deliveries, how long
    # a delivery is tried again after its event (then it is `failed`), and each POST's deadline.
    webhook_interval: float = Field(2.0, gt=0, le=3600)
    webhook_retry_for: float = Field(86_400.0, gt=0, le=30 * 86_400)
    webhook_timeout: float = Field(5.0, gt=0, le=60)
    # Receivers that may resolve to private or loopback addresses, as `host:port` or `host` (ports
    # 80 and 443), like VITRINE_FETCH_PRIVATE_HOSTS; none by default: the SSRF guard refuses them.
    webhook_private_hosts: CommaList = []


class ExplainSettings(Group):
    model_config = _group_config(ENV_PREFIX + "EXPLAIN_")

    # Grad-CAM keeps activations and gradients of the last stage: smaller batches than embedding.
    batch_size: int = Field(16, ge=1, le=1024)
    # Share of confident suggestions explained too, so auditors see what they look at.
    sample_rate: float = Field(0.05, ge=0, le=1)
    # At most this many overlay requests wait in the explain queue; the rest wait in Postgres.
    queue_limit: int = Field(10_000, ge=1)


class OpsSettings(Group):
    """Flower and the Prometheus exporter."""

    flower_user: str | None = None
    flower_password: SecretStr | None = None
    flower_port: int = Field(5555, ge=1, le=65535)
    metrics_port: int = Field(9108, ge=1, le=65535)
    # Every process's log lines: "text" (one line, time level logger: message) or "json" (one
    # JSON object per line, for a log shipper).
    log_format: Literal["text", "json"] = "text"


class ReviewSettings(Group):
    """The review app and the HTTP API."""

    # Seconds a claimed item stays with its moderator before it returns to the queue.
    review_lease_seconds: int = Field(600, ge=10, le=24 * 3600)
    # Signs the review app's session cookies; every instance of the app needs the same one.
    session_secret: SecretStr | None = None
    session_max_age: int = Field(12 * 3600, ge=60)
    # A session not used for this long (seconds) has ended: the moderator signs in again.
    session_idle_timeout: int = Field(3600, ge=60)
    # Seconds a failed sign-in waits before it answers, doubled for each recent failure of the name.
    sign_in_delay: float = Field(0.5, ge=0, le=10)
    # After this many failures of one name within 15 minutes (five times as many from one
    # address), sign-ins of it are refused (429) for `sign_in_lockout_seconds`, in every process.
    sign_in_lockout_after: int = Field(10, ge=1)
    sign_in_lockout_seconds: int = Field(900, ge=1)
    # Addresses (or CIDR ranges, comma-separated; `*` for any) whose X-Forwarded-Proto/-For the
    # review app believes with `vitrine serve --proxy-headers`: the TLS proxy's. Behind https the
    # session cookie is then Secure and answers carry HSTS.
    forwarded_allow_ips: str = "127.0.0.1"
    # The largest request body the API reads (bytes), refused before it is parsed: 500 listings
    # with long titles are well under 1 MiB.
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Requests per second per token (and per address, for calls without one), with bursts of
    # `*_burst`; counted in Redis by every process. Past them: 429 with Retry-After.
    rate_limit: float = Field(50.0, gt=0)
    rate_burst: int = Field(200, ge=1)
    address_rate_limit: float = Field(100.0, gt=0)
    address_rate_burst: int = Field(400, ge=1)
    # Long-polls (`?wait=`) one token may keep open at once.
    long_polls_per_token: int = Field(20, ge=1)
    # Long-polls one process of the app keeps open at once, whoever asks.
    long_polls_per_process: int = Field(200, ge=1)


class Settings(BaseModel):
    """Every group, read together; `Settings.GROUPS` maps attribute names to group classes."""

    GROUPS: ClassVar[dict[str, type[Group]]] = {
        "services": ServiceSettings,
        "store": StoreSettings,
        "backbone": BackboneSettings,
        "embed": EmbedSettings,
        "photos": PhotoSettings,
        "suggestions": SuggestionSettings,
        "refit": RefitSettings,
        "delivery": DeliverySettings,
        "explain": ExplainSettings,
        "ops": OpsSettings,
        "review": ReviewSettings,
    }

    services: ServiceSettings
    store: StoreSettings
    backbone: BackboneSettings
    embed: EmbedSettings
    photos: PhotoSettings
    suggestions: SuggestionSettings
    refit: RefitSettings
    delivery: DeliverySettings
    explain: ExplainSettings
    ops: OpsSettings
    review: ReviewSettings

    def replace(self, **overrides: Any) -> Settings:
        """A validated copy with some settings changed, named as variables are (`batch_size=4`)."""
        values = {
            group: getattr(self, group).model_dump(by_alias=False, exclude_unset=False)
            for group in self.GROUPS
        }
        for key, value in overrides.items():
            group, field = _owner(key)
            values[group][field] = value
        return _build(values)


def variables() -> dict[str, tuple[str, str]]:
    """Every `VITRINE_*` variable → (group, field)."""
    return {
        variable: (group, field)
        for group, cls in Settings.GROUPS.items()
        for variable, field in cls.variables().items()
    }


def _owner(key: str) -> tuple[str, str]:
    variable = key.upper() if key.upper().startswith(ENV_PREFIX) else ENV_PREFIX + key.upper()
    variable = RENAMED_VARIABLES.get(variable, variable)
    try:
        return variables()[variable]
    except KeyError:
        raise ConfigError(f"{variable}: no such setting") from None


def _build(values: Mapping[str, Mapping[str, Any]]) -> Settings:
    groups: dict[str, Group] = {}
    problems: list[str] = []
    for group, cls in Settings.GROUPS.items():
        try:
            groups[group] = cls(**values.get(group, {}))
        except ValidationError as error:
            for problem in error.errors():
                field = ".".join(str(part) for part in problem["loc"])
                problems.append(f"{cls.prefix()}{field}".upper() + f": {problem['msg']}")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return Settings.model_validate(groups)


def with_environment(env: Mapping[str, str]) -> Settings:
    """The settings as a child process started with `env` laid over this environment will read them."""
    overrides = {key: value for key, value in env.items() if key.startswith(ENV_PREFIX)}
    return load_settings(**overrides)


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; errors name the variables.

    `overrides` are named as the variables are, with or without the prefix (`batch_size=4`).
    Each process calls this once, at start, and hands the result to what needs it: nothing in
    the library reads the environment on its own.
    """
    for old, new in RENAMED_VARIABLES.items():
        if old in os.environ:
            log.warning("%s is renamed %s; the old name is read for one more release", old, new)
    values: dict[str, dict[str, Any]] = {group: {} for group in Settings.GROUPS}
    for key, value in overrides.items():
        group, field = _owner(key)
        values[group][field] = value
    return _build(values)
