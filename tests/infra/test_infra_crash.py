"""A crashed local server: `up` brings it back at once on its port, and a failed `up` forgets nothing."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from infra.launcher import InfraError, Launcher, is_ours
from infra.ports import port_in_use
from services.settings import Settings
from tests.support.local_servers import (
    kill_leaving_time_wait,
    open_http_connection,
    plain_bind_fails,
    recorded_pid,
)
from tests.support.wait import wait_for


def _launcher(state_dir: Path) -> Launcher:
    # A new Launcher per call, as each `offhours infra` command is a new process.
    return Launcher(Settings(state_dir=state_dir, s3_bucket="crash-test"), state_dir=state_dir, free_ports=True)


@pytest.mark.slow  # starts a second stack of servers and SIGKILLs one
async def test_up_restarts_a_killed_s3_at_once_on_its_port(tmp_path: Path) -> None:
    first = await _launcher(tmp_path).up()
    try:
        port = first.ports.s3
        kill_leaving_time_wait(recorded_pid(tmp_path, "s3"), open_http_connection(port))
        # What made `up` refuse for a minute: the dead server's connection still holds the port.
        assert plain_bind_fails(port)
        assert not port_in_use("127.0.0.1", port)

        again = await _launcher(tmp_path).up()
        assert again.started == ["s3"] and sorted(again.already_running) == ["kafka", "mongo"]
        assert again.ports == first.ports
        assert again.processes["s3"].pid != first.processes["s3"].pid
        assert {s.name: s.state for s in await _launcher(tmp_path).status()} == dict.fromkeys(
            ("s3", "mongo", "kafka"), "running")
    finally:
        await _launcher(tmp_path).down()


@pytest.mark.slow  # starts a second stack of servers and SIGKILLs one
async def test_a_failed_up_keeps_the_running_servers_and_down_stops_them(tmp_path: Path) -> None:
    first = await _launcher(tmp_path).up()
    stopped: list[str] = []
    try:
        os.kill(first.processes["s3"].pid, signal.SIGKILL)
        # Its PID turns zombie before its last thread has closed the listening socket: wait for both.
        await wait_for(lambda: not is_ours(first.processes["s3"]) and not port_in_use("127.0.0.1", first.ports.s3),
                       what="the killed S3 to be gone")
        # A process this launcher did not start takes the dead server's port: S3 cannot start.
        with socket.create_server(("127.0.0.1", first.ports.s3)):
            with pytest.raises(InfraError, match="already in use"):
                await _launcher(tmp_path).up()
            recorded = {s.name: s for s in await _launcher(tmp_path).status()}
            assert recorded["mongo"].pid == first.processes["mongo"].pid
            assert recorded["kafka"].pid == first.processes["kafka"].pid
            assert {n: s.state for n, s in recorded.items()} == {"s3": "stopped", "mongo": "running",
                                                                 "kafka": "running"}
            stopped = await _launcher(tmp_path).down()
    finally:
        if not stopped:
            await _launcher(tmp_path).down()
    assert sorted(stopped) == ["kafka", "mongo"]
    assert not is_ours(first.processes["mongo"]) and not is_ours(first.processes["kafka"])
