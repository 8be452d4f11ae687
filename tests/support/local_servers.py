"""Crashing the local servers the launcher started: kill -9 by the PID in infra.json, and the
TIME_WAIT connections a killed server leaves on its port."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path


def recorded_pid(state_dir: Path, name: str) -> int:
    """The PID infra.json records for server `name` (kafka, mongo, s3)."""
    return int(json.loads((state_dir / "infra.json").read_text())["processes"][name]["pid"])


def open_http_connection(port: int) -> socket.socket:
    """A keep-alive connection to an HTTP server on loopback, its one request fully answered.

    Everything sent has been read by the server, so a kill -9 of it closes the server's end with
    a FIN (not a reset) and the port is left with a connection in TIME_WAIT once this end closes.
    """
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(65536)
        if not chunk:
            break
        head += chunk
    return conn


def kill_leaving_time_wait(pid: int, conn: socket.socket) -> None:
    """SIGKILL the server `conn` talks to, then close `conn` after the server's end has closed."""
    os.kill(pid, signal.SIGKILL)
    conn.settimeout(10)
    while True:  # the kernel closes the dead server's socket: its FIN reaches us as EOF
        try:
            if not conn.recv(65536):
                break
        except ConnectionResetError:
            break
    conn.close()


def plain_bind_fails(port: int) -> bool:
    """Whether a bind without SO_REUSEADDR is refused: true while the port has TIME_WAIT connections."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
