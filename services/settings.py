"""The one typed settings object. Nothing else in offhours reads the environment.

Defaults point at the local stand-ins that `offhours infra up` starts on loopback, so a
fresh checkout works with no configuration; production sets the same variables to real
Kafka, MongoDB and S3 endpoints.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OFFHOURS_", extra="ignore", populate_by_name=True)

    # --- the three real systems -------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:19092", validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers")
    )
    mongodb_uri: str = Field(
        "mongodb://127.0.0.1:27117/?directConnection=true",
        validation_alias=AliasChoices("MONGODB_URI", "mongodb_uri"),
    )
    mongodb_database: str = Field("offhours", validation_alias=AliasChoices("MONGODB_DATABASE", "mongodb_database"))
    s3_endpoint_url: str | None = Field(
        "http://127.0.0.1:19000", validation_alias=AliasChoices("S3_ENDPOINT_URL", "s3_endpoint_url")
    )
    s3_bucket: str = Field("offhours", validation_alias=AliasChoices("S3_BUCKET", "s3_bucket"))
    s3_region: str = Field("us-east-1", validation_alias=AliasChoices("AWS_REGION", "S3_REGION", "s3_region"))
    s3_access_key_id: str = Field(
        "offhours", validation_alias=AliasChoices("AWS_ACCESS_KEY_ID", "S3_ACCESS_KEY_ID", "s3_access_key_id")
    )
    s3_secret_access_key: str = Field(
        "offhours-secret",
        validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY", "S3_SECRET_ACCESS_KEY", "s3_secret_access_key"),
    )
    # Kafka topic names are prefixed so that several deployments (or test runs) share a broker.
    topic_prefix: str = "offhours"

    # --- HTTP API ---------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str | None = None

    # --- local infra (offhours infra up) -----------------------------------------------
    state_dir: Path = Path(".offhours")

    # --- models -----------------------------------------------------------------------
    models_file: Path | None = None
    llama_threads: int | None = None
    # Bearer token for `upstream` models whose entry sets no `api_key` (a cloud API).
    upstream_api_key: SecretStr | None = None

    # --- limits (docs/api.md) ---------------------------------------------------------
    max_file_bytes: int = 500 * 1024 * 1024
    max_line_bytes: int = 6 * 1024 * 1024
    max_requests_per_batch: int = 50_000
    # Test-model batches (batch-test-model, /v1/chat/ds-test): a free check of a small file
    # (docs/architecture.md, "The test model").
    test_model_max_file_bytes: int = 1024 * 1024
    test_model_max_lines: int = 100
    test_model_max_running: int = 2

    # --- sharing one service among projects (docs/security.md) ---------------------------
    # Per project: batches not yet ended (validating, in_progress, finalizing, cancelling).
    project_max_running_batches: int = 100
    # Per project: registered webhook endpoints.
    project_max_webhook_endpoints: int = 20
    # Per project: uploads whose body is being received at once (per API process).
    project_max_concurrent_uploads: int = 4
    # An upload whose body sends nothing for this long is abandoned (408), so a stalled client
    # holds no buffer.
    upload_read_timeout_seconds: float = 60.0
    # Every user-supplied string quoted in an error message is cut to this many characters.
    error_quote_max_chars: int = 200

    # --- files (services/files) -----------------------------------------------------------
    # OpenAI's default: a `purpose=batch` upload without expires_after expires after 30 days
    # (0 = never). Other purposes never expire unless the upload asks.
    files_batch_default_expires_seconds: int = 30 * 24 * 3600
    # How often each api process sweeps expired / deleted / abandoned files.
    files_sweep_interval_seconds: float = 60.0
    # An upload still `uploading` after this long belongs to a dead process and is reclaimed.
    files_stale_upload_seconds: float = 6 * 3600

    # --- batches --------------------------------------------------------------------------
    # Input URLs (`input_file_id` = http(s) URL) may reach only public addresses, unless an address or
    # host is listed here (CIDRs or host names, comma-separated in the env). Separate from the webhook list.
    input_url_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Development only: allow every non-public address for input URLs (metadata addresses stay refused).
    input_url_allow_private: bool = False
    # The whole fetch of an input URL (connect, redirects, every byte) must finish within this long.
    input_url_timeout_seconds: float = 900.0
    # Redirects followed (each one checked again) when fetching an input URL.
    input_url_max_redirects: int = 5
    # Tests only: a batch expires this many seconds after creation instead of after its window.
    batch_window_override_seconds: float | None = None
    # GET /v1/models lists a model while one of its workers heartbeated within this many seconds.
    worker_liveness_seconds: float = 30.0

    # --- dispatcher (docs/architecture.md) ---------------------------------------------------
    # Partitions of each `{prefix}.work.<model>` topic: the most workers of one model that can share work.
    work_topic_partitions: int = 8
    # Request lines per work chunk when the model's registry entry has no `chunk_lines`.
    chunk_lines_default: int = 1000
    # A chunk closes once it spans this many bytes, whatever its line count (one line may exceed it).
    chunk_max_bytes: int = 16 * 1024 * 1024
    # At most one `batch.progress` event (and request_counts update) per batch per interval.
    progress_interval_seconds: float = 1.0
    # How often the dispatcher looks for expired batches, timed-out cancels and stalled finalizes.
    sweep_interval_seconds: float = 5.0
    # A cancelling batch whose in-flight chunks have not drained after this long is finalized anyway.
    cancel_timeout_seconds: float = 600.0
    # A `finalizing` batch untouched this long is assumed orphaned by a dead dispatcher and resumed.
    finalize_stale_seconds: float = 300.0
    # Outbox events older than this are re-published (a writer died between its write and its send).
    outbox_stale_seconds: float = 5.0
    # Validation passes run at once per dispatcher, and at most this many of them for one project,
    # so one slow input never holds up another project's batch.
    validation_concurrency: int = 8
    validation_per_project: int = 2
    # A batch still `validating` this long after creation fails (`validation_timeout`); the sweep checks.
    validating_timeout_seconds: float = 3600.0
    # A pending chunk with no counted result this long after it was (re)published is published again
    # (its work message or its result was lost): the larger of this floor and
    # chunk_republish_factor x the model's measured chunk time.
    chunk_republish_min_seconds: float = 120.0
    chunk_republish_factor: float = 4.0
    # Port of the dispatcher's /healthz and /metrics; 0: an ephemeral port (logged), so several
    # dispatchers, or one beside `offhours dev --port N`, never collide. Deployments set a fixed one.
    dispatcher_metrics_port: int = 0

    # --- scheduling (docs/scheduling.md) ----------------------------------------------------
    # Chunks admitted to a model's work topic per live worker beyond what it holds at once
    # (worker_chunks_in_flight): the window is live workers x (worker_chunks_in_flight + this). Enough
    # that a worker finishing a chunk finds the next one already waiting (a chunk is keyed to one
    # partition, so the margin is per worker), few enough that a batch submitted later starts within
    # about one chunk's time. The rest of every batch waits in the ledger.
    scheduling_window_margin_chunks: int = 1
    # A batch is "at risk" (ordered by deadline ahead of fair share, within its priority class) once its
    # time left is under this many times what the model's whole queued backlog takes at its measured rate.
    scheduling_deadline_safety: float = 1.5
    # Seconds of settled results the model's measured rate (lines/s) is computed over.
    scheduling_rate_window_seconds: float = 60.0
    # Benchmarks only: the scheduler reads a batch's deadline as created_at + this x its window
    # (1/3600 makes `24h` a 24-second deadline for ordering); expiry itself is unchanged.
    scheduling_deadline_scale: float = 1.0
    # Project settings are read from MongoDB at most this often per process (`offhours projects set`
    # takes effect within it, without a restart).
    project_settings_ttl_seconds: float = 5.0
    # Defaults for every project without its own (`offhours projects set`): its share of a model
    # (deficit round robin by lines), the highest `metadata.priority` it may ask for, and the requests
    # it may have enqueued (not yet finished) per model (0 = no limit). Running batches:
    # project_max_running_batches above.
    project_default_weight: float = 1.0
    project_default_max_priority: str = "normal"
    project_default_max_enqueued: int = 0

    # --- worker -----------------------------------------------------------------------------
    worker_heartbeat_interval_seconds: float = 5.0
    # 0: an ephemeral port (logged), so several workers can share a host without configuration.
    worker_metrics_port: int = 0
    # Requests in flight per chunk; None = the engine's own max_concurrency.
    worker_concurrency: int | None = None
    # Chunks a worker runs at once: the next chunk's requests fill the engine while one chunk's drain.
    worker_chunks_in_flight: int = 2
    # Kafka drops a consumer that does not come back for a record within this long: a chunk (worker) or
    # a validation pass (dispatcher) must finish well inside it; chunk_lines keeps chunks short.
    kafka_max_poll_interval_seconds: float = 1800.0
    # Longest a consumer's fetch waits on the broker for new records (latency of every hop of a batch).
    kafka_fetch_max_wait_ms: int = 100
    # How quickly Kafka hands a dead (SIGKILLed) member's partitions to the others.
    kafka_session_timeout_seconds: float = 10.0
    # Tries of a chunk while the engine or storage as a whole is unavailable; after the last one its
    # unanswered lines become `engine_unavailable` error lines and the batch goes on.
    worker_chunk_max_attempts: int = 5
    # On SIGTERM the current chunk gets this long to finish before it is abandoned (uncommitted).
    worker_shutdown_grace_seconds: float = 30.0

    # --- notifier (docs/webhooks.md) ---------------------------------------------------------
    # Webhook URLs must resolve to public addresses only, unless an address or host is listed here:
    # CIDRs ("127.0.0.1/32", "10.0.0.0/8") or host names ("hooks.internal"); comma-separated in the env.
    webhook_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Development only: allow every non-public address (loopback, private, link-local, CGNAT).
    # Cloud metadata addresses stay refused unless the allowlist names them.
    webhook_allow_private: bool = False
    # AES-GCM key that encrypts webhook signing secrets at rest: base64 of 32 bytes
    # (`python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"`). Unset: a key
    # file in state_dir is created on first use — fine on one host; production must set this, the
    # same value for the API and every notifier.
    webhook_secret_key: SecretStr | None = None
    # Old keys, still accepted for decryption after webhook_secret_key changed (comma-separated).
    webhook_secret_previous_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # A delivery attempt is a success only if a 2xx arrives within this many seconds.
    webhook_timeout_seconds: float = 10.0
    # Failed deliveries are retried with exponential backoff and full jitter for this long, then dead.
    webhook_retry_horizon_seconds: float = 24 * 3600.0
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_max_delay_seconds: float = 3600.0
    # At most this much of a receiver's response body is read (and kept, for the deliveries listing).
    webhook_response_body_cap_bytes: int = 4096
    # After a secret rotation the old secret keeps signing (beside the new one) this long.
    webhook_secret_grace_seconds: float = 24 * 3600.0
    # Deliveries in flight at once: overall, and per endpoint (a slow receiver holds only its own share).
    webhook_max_concurrency: int = 256
    webhook_max_concurrency_per_endpoint: int = 8
    # ... and per receiving host, however many endpoints (and projects) point at it.
    webhook_max_concurrency_per_host: int = 16
    # Delivery documents that ended (delivered or dead) are removed after this long.
    webhook_delivery_ttl_seconds: float = 30 * 24 * 3600.0
    # Deliveries held in memory, per endpoint and overall; beyond that they wait in MongoDB for the scheduler.
    webhook_max_queued_per_endpoint: int = 1000
    webhook_max_queued: int = 10_000
    # How often the notifier's scheduler looks for due retries.
    webhook_poll_interval_seconds: float = 1.0
    # Port of the notifier's /healthz and /metrics; 0: an ephemeral port (logged), like the
    # dispatcher's and the workers'. Deployments set a fixed one.
    notifier_metrics_port: int = 0

    # The largest event or message the producer will send; a larger one is set aside (logged, counted).
    kafka_max_message_bytes: int = 1024 * 1024

    @field_validator("webhook_allowlist", "input_url_allowlist", "webhook_secret_previous_keys", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    log_level: str = "INFO"
    log_json: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
