"""The local launcher against real servers: up, status, idempotent up, down, PID ownership."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import pytest

from infra.launcher import InfraError, InfraInfo, Launcher, Ports, ProcessRecord, is_ours
from services.cli import infra_command
from services.settings import Settings


def _settings(state_dir: Path) -> Settings:
    return Settings(state_dir=state_dir, s3_bucket="launcher-test")


@pytest.mark.slow  # starts a second stack of servers
async def test_up_status_idempotent_down(tmp_path: Path) -> None:
    launcher = Launcher(_settings(tmp_path), state_dir=tmp_path, free_ports=True)
    assert [s.state for s in await launcher.status()] == ["stopped"] * 3
    try:
        first = await launcher.up()
        assert sorted(first.started) == ["kafka", "mongo", "s3"]
        assert (tmp_path / "infra.json").is_file()
        for name in ("kafka", "mongo", "s3"):
            assert (tmp_path / "logs" / f"{name}.log").is_file()
        # The S3 secret never lands in the state file.
        assert "offhours-secret" not in (tmp_path / "infra.json").read_text()

        statuses = {s.name: s for s in await launcher.status()}
        assert {s.state for s in statuses.values()} == {"running"}
        assert statuses["kafka"].port == first.ports.kafka

        # A second `up` (even from a new Launcher, as a second CLI call would be) starts nothing.
        again = await Launcher(_settings(tmp_path), state_dir=tmp_path, free_ports=True).up()
        assert again.started == []
        assert sorted(again.already_running) == ["kafka", "mongo", "s3"]
        assert again.ports == first.ports
        assert {n: r.pid for n, r in again.processes.items()} == {
            n: r.pid for n, r in first.processes.items()
        }
        assert again.env(launcher.settings)["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{first.ports.kafka}"
    finally:
        stopped = await launcher.down()
    assert sorted(stopped) == ["kafka", "mongo", "s3"]
    assert [s.state for s in await launcher.status()] == ["stopped"] * 3
    for rec in first.processes.values():
        assert not is_ours(rec)
    assert await launcher.down() == []  # nothing left to stop


def test_foreign_pid_is_not_ours() -> None:
    # Our own PID with a different start time models "the PID was reused by another process".
    rec = ProcessRecord("kafka", os.getpid(), 1, [], "", start_ticks=1, started_at=0.0)
    assert not is_ours(rec)


async def test_down_leaves_reused_pid_alone(tmp_path: Path) -> None:
    launcher = Launcher(_settings(tmp_path), state_dir=tmp_path, ports=Ports(1, 2, 3))
    launcher._save(  # a stale state file whose PID now belongs to this very test process
        Ports(1, 2, 3), False, {"kafka": ProcessRecord("kafka", os.getpid(), 1, [], "", 1, 0.0)}
    )
    assert {s.name: s.state for s in await launcher.status()}["kafka"] == "not-ours"
    assert await launcher.down() == []  # and we are still alive to assert it


async def test_port_in_use_is_reported(infra: InfraInfo, tmp_path: Path) -> None:
    taken = Ports(kafka=infra.ports.kafka, mongo=infra.ports.mongo, s3=infra.ports.s3)
    launcher = Launcher(_settings(tmp_path), state_dir=tmp_path, ports=taken)
    with pytest.raises(InfraError, match="already in use"):
        await launcher.up()
    assert [s.state for s in await launcher.status()] == ["stopped"] * 3


def test_cli_help_and_parsing() -> None:
    parser = argparse.ArgumentParser(prog="offhours")
    infra_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["infra", "up", "--persist", "--state-dir", "/tmp/x", "--kafka-port", "1234"])
    assert args.persist and args.kafka_port == 1234 and args.state_dir == Path("/tmp/x")
    assert args.func is infra_command._up
    assert parser.parse_args(["infra", "down"]).func is infra_command._down
    assert parser.parse_args(["infra", "status"]).func is infra_command._status
    with pytest.raises(SystemExit):
        parser.parse_args(["infra", "up", "--help"])


@pytest.mark.slow  # starts, stops and restarts a second stack of servers
async def test_persist_keeps_kafka_data_across_restart(tmp_path: Path) -> None:
    """--persist: Tansu stores topics on the local S3, so a down/up cycle keeps messages."""
    from events.bus import Consumer, Producer
    from events.topics import ensure_topics

    settings = _settings(tmp_path)
    launcher = Launcher(settings, state_dir=tmp_path, free_ports=True, persist=True)
    try:
        info = await launcher.up()
        assert info.persist
        s = info.apply(settings)
        await ensure_topics(s, ["persisted"], partitions=1)
        async with Producer(s) as producer:
            await producer.send("persisted", "k", b"survives")
        assert await launcher.down() == ["kafka", "mongo", "s3"]
        assert (tmp_path / "s3" / "offhours-kafka").is_dir()

        again = await Launcher(settings, state_dir=tmp_path, persist=True).up()
        assert again.ports == info.ports and sorted(again.started) == ["kafka", "mongo", "s3"]
        async with Consumer(s, ["persisted"], group_id="reader") as consumer:
            got: list = []
            async with asyncio.timeout(60):  # hang guard only
                while not got:
                    got = await consumer.getmany(timeout_ms=500)
        assert [r.value for r in got] == [b"survives"]
    finally:
        await launcher.down()
