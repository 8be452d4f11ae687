"""`offhours dev` refuses a busy port before it starts anything: real sockets, the real command."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.launcher import InfraInfo
from services.cli.dev_command import port_in_use
from tests.support.run_batch import OFFHOURS, REPO


def _dev(state_dir: Path, port: int, **env: str) -> subprocess.CompletedProcess[str]:
    # A timeout: should the check let it through, it must not bring up a whole stack and hang.
    return subprocess.run(
        [OFFHOURS, "dev", "--port", str(port), "--state-dir", str(state_dir), "--models", "batch-test-model"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
        env={**os.environ, "OFFHOURS_HOST": "127.0.0.1", **env},
    )


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on, for the length of the test."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return int(server.getsockname()[1])


def test_a_busy_api_port_stops_it_before_anything_starts(tmp_path: Path, listening: int) -> None:
    state = tmp_path / "state"
    proc = _dev(state, listening)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"offhours dev: port {listening} is busy: the API would listen there (is another `offhours dev` "
            f"running?). Pick another with --port N or OFFHOURS_PORT=N, e.g. `offhours dev --port "
            f"{listening + 1}`") in proc.stderr
    assert proc.stderr.rstrip().endswith("offhours dev: nothing was started")
    assert "starting Kafka" not in proc.stdout and "offhours is running" not in proc.stdout
    assert not state.exists()  # no infra.json, no logs: nothing was started


def test_a_port_left_in_time_wait_is_not_busy() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server's end closes first: it lingers (TIME_WAIT) once the client closes too
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # without SO_REUSEADDR the port still looks taken
    assert not port_in_use("127.0.0.1", port)
    with socket.create_server(("127.0.0.1", port)):
        assert port_in_use("127.0.0.1", port)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
async def test_servers_running_from_the_state_folder_are_reused_not_refused(
    infra: InfraInfo, listening: int,
) -> None:
    # The session's Kafka/MongoDB/S3 are recorded in its state folder: their ports are busy, but
    # `offhours dev` would reuse them. Only the (held) API port may stop it.
    proc = await asyncio.to_thread(_dev, infra.state_dir, listening)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"port {listening} is busy: the API" in proc.stderr
    assert "would start" not in proc.stderr


async def test_a_busy_port_of_a_server_it_would_start_stops_it(infra: InfraInfo, tmp_path: Path) -> None:
    # A fresh state folder whose endpoints are the session's servers: to this run they are not its
    # own, so it would start Kafka, MongoDB and S3 there, and must not.
    state = tmp_path / "state"
    proc = await asyncio.to_thread(
        _dev, state, _free_port(), KAFKA_BOOTSTRAP_SERVERS=infra.kafka_bootstrap_servers,
        MONGODB_URI=infra.mongodb_uri, S3_ENDPOINT_URL=infra.s3_endpoint_url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for name, what in (("kafka", "Kafka (Tansu)"), ("mongo", "MongoDB (SecantusDB)"), ("s3", "S3 (rclone)")):
        port = infra.ports.of(name)
        assert (f"offhours dev: port {port} is busy: offhours dev would start {what} there. Start it on another "
                f"port first, e.g. `offhours infra up --{name}-port {port + 1} --state-dir {state}`; "
                "offhours dev then reuses it") in proc.stderr
    assert "the API would listen" not in proc.stderr
    assert not state.exists()
