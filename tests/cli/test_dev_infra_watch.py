"""`offhours dev` notices a local server that stopped, says which one and the command that brings it back."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infra.launcher import Launcher, Ports, ProcessRecord, is_ours
from services.cli.dev_command import InfraWatch
from services.settings import Settings
from tests.support.local_servers import recorded_pid
from tests.support.run_batch import OFFHOURS, REPO
from tests.support.wait import wait_for


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "600"])


def _record(name: str, proc: subprocess.Popen[bytes], port: int) -> ProcessRecord:
    return ProcessRecord(name, proc.pid, port, ["sleep", "600"], f"/logs/{name}.log", None, 0.0)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


async def test_a_stopped_server_is_told_once_with_the_command_that_restarts_it(tmp_path: Path) -> None:
    state = tmp_path / "state dir"  # a space: the printed command must still work when pasted
    state.mkdir()
    launcher = Launcher(Settings(state_dir=state), state_dir=state, ports=Ports(19, 27, 9))
    s3, mongo = _sleeper(), _sleeper()
    try:
        launcher._save(Ports(19, 27, 9), False, {"s3": _record("s3", s3, 9), "mongo": _record("mongo", mongo, 27)})
        watch = InfraWatch(launcher, persist=False)
        assert watch.check() == []

        _kill(s3)
        command = f"offhours infra up --state-dir {shlex.quote(str(state.resolve()))}"
        assert watch.check() == [
            f"S3 (rclone) (pid {s3.pid}, port 9) is not running any more; its log is /logs/s3.log. "
            f"Bring it back with: {command}"]
        assert watch.check() == []  # told once

        # Brought back, then crashed again: a new crash, told again.
        again = _sleeper()
        launcher._save(Ports(19, 27, 9), False, {"s3": _record("s3", again, 9), "mongo": _record("mongo", mongo, 27)})
        assert watch.check() == []
        _kill(again)
        assert [n.split(" is not")[0] for n in watch.check()] == [f"S3 (rclone) (pid {again.pid}, port 9)"]
    finally:
        for proc in (s3, mongo):
            _kill(proc)


def test_the_restart_command_keeps_kafka_persistent(tmp_path: Path) -> None:
    watch = InfraWatch(Launcher(Settings(state_dir=tmp_path), state_dir=tmp_path), persist=True)
    assert watch.restart_command() == f"offhours infra up --state-dir {tmp_path.resolve()} --persist"


@pytest.fixture
async def dev_stack(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    """`offhours dev` with the test model on free ports, until it printed its banner."""
    state = tmp_path / "state"
    ports, api_port = Ports.free(), Ports.free().kafka
    env = {**os.environ, "OFFHOURS_HOST": "127.0.0.1",
           "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports.kafka}",
           "MONGODB_URI": f"mongodb://127.0.0.1:{ports.mongo}/?directConnection=true",
           "S3_ENDPOINT_URL": f"http://127.0.0.1:{ports.s3}"}
    proc = await asyncio.create_subprocess_exec(
        OFFHOURS, "dev", "--port", str(api_port), "--state-dir", str(state), "--models", "batch-test-model",
        "--no-notifier", "--stop-infra", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        seen = b""
        async with asyncio.timeout(240):  # hang guard only: a whole stack starts on a busy machine
            while b"offhours is running" not in seen:
                line = await proc.stdout.readline()
                assert line, f"offhours dev ended before it was ready: {seen.decode()}"
                seen += line
        yield proc, state
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(120):
                await proc.communicate()
        await Launcher(Settings(state_dir=state), state_dir=state).down()


@pytest.mark.slow  # the whole local stack as `offhours dev` starts it, and a SIGKILLed server
async def test_dev_tells_which_server_crashed_and_how_to_bring_it_back(
    dev_stack: tuple[asyncio.subprocess.Process, Path],
) -> None:
    proc, state = dev_stack
    s3 = recorded_pid(state, "s3")
    os.kill(s3, signal.SIGKILL)
    assert proc.stderr is not None
    told = b""
    async with asyncio.timeout(120):  # hang guard only
        while b"Bring it back with" not in told:
            line = await proc.stderr.readline()
            assert line, f"offhours dev ended without telling: {told.decode()}"
            told += line
    notice = told.decode().splitlines()[-1]
    assert notice.startswith(f"offhours dev: S3 (rclone) (pid {s3}, port ")
    assert notice.endswith(f"Bring it back with: offhours infra up --state-dir {state.resolve()}")
    assert "Kafka" not in notice and "MongoDB" not in notice
    assert proc.returncode is None  # it keeps running: the server can be brought back under it
    # The command it printed works: S3 is back, on its port, under the same state folder.
    again = await Launcher(Settings(state_dir=state), state_dir=state).up()
    assert again.started == ["s3"]
    await wait_for(lambda: recorded_pid(state, "s3") != s3, what="a new S3 in infra.json")
    assert not is_ours(ProcessRecord("s3", s3, 0, [], "", None, 0.0))
