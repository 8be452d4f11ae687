"""Readiness probes that speak each server's real protocol.

An open TCP port is not "ready": Tansu accepts connections before it answers metadata, and
SecantusDB opens WiredTiger after binding. Each probe does one cheap real request and returns
True/False (never raises), so the launcher can poll it until a deadline.
"""

from __future__ import annotations

import contextlib
import logging

import aioboto3
from aiokafka.admin import AIOKafkaAdminClient
from botocore.config import Config
from pymongo import AsyncMongoClient

log = logging.getLogger(__name__)


async def kafka_ready(bootstrap_servers: str) -> bool:
    """Kafka is ready when a metadata request (list topics) succeeds."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception as exc:  # any failure just means "not yet"
        log.debug("kafka probe failed: %r", exc)
        return False
    finally:
        with contextlib.suppress(Exception):  # closing a half-started client may fail; nothing to do
            await admin.close()


async def mongo_ready(uri: str) -> bool:
    """MongoDB is ready when `ping` succeeds."""
    client: AsyncMongoClient = AsyncMongoClient(uri, serverSelectionTimeoutMS=1500, connectTimeoutMS=1500)
    try:
        await client.admin.command("ping")
        return True
    except Exception as exc:
        log.debug("mongo probe failed: %r", exc)
        return False
    finally:
        await client.close()


def s3_client_config() -> Config:
    # Same flags as services.stores.s3: rclone rejects botocore's default flexible checksums.
    return Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
        connect_timeout=2,
        read_timeout=5,
    )


async def s3_ready(endpoint_url: str, access_key: str, secret_key: str, region: str) -> bool:
    """S3 is ready when an authenticated ListBuckets succeeds (this also checks the keys)."""
    session = aioboto3.Session()
    try:
        async with session.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=s3_client_config(),
        ) as s3:
            await s3.list_buckets()
        return True
    except Exception as exc:
        log.debug("s3 probe failed: %r", exc)
        return False


async def s3_create_bucket(
    endpoint_url: str, access_key: str, secret_key: str, region: str, bucket: str
) -> None:
    """Create `bucket` if missing. Done through the S3 API rather than mkdir, because rclone
    caches directory listings (--dir-cache-time) and would not see a directory made behind its back."""
    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=s3_client_config(),
    ) as s3:
        existing = {b["Name"] for b in (await s3.list_buckets()).get("Buckets", [])}
        if bucket not in existing:
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):  # lost a race: fine
                await s3.create_bucket(Bucket=bucket)
