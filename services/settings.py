"""The one typed settings object. Nothing else in offhours reads the environment.

Defaults point at the local stand-ins that `offhours infra up` starts on loopback, so a
fresh checkout works with no configuration; production sets the same variables to real
Kafka, MongoDB and S3 endpoints.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    # --- limits (DESIGN.md §2) --------------------------------------------------------
    max_file_bytes: int = 500 * 1024 * 1024
    max_line_bytes: int = 6 * 1024 * 1024
    max_requests_per_batch: int = 50_000
    # Test-model batches (batch-test-model, /v1/chat/ds-test): the seed documents' limits.
    test_model_max_file_bytes: int = 1024 * 1024
    test_model_max_lines: int = 100
    test_model_max_running: int = 2

    # --- batches --------------------------------------------------------------------------
    # Tests only: a batch expires this many seconds after creation instead of after its window.
    batch_window_override_seconds: float | None = None
    # GET /v1/models lists a model while one of its workers heartbeated within this many seconds.
    worker_liveness_seconds: float = 30.0

    log_level: str = "INFO"
    log_json: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
