"""Whether a local port is taken: the one check the launcher and `offhours dev` share.

A port counts as taken only while something *listens* there. The bind that probes it sets
SO_REUSEADDR, as the servers' own binds do (rclone, Tansu and SecantusDB all set it): the
connections of a server that was just killed linger in TIME_WAIT for about a minute, and a
plain bind would mistake them for a live process and refuse to start its replacement.
"""

from __future__ import annotations

import errno
import socket


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on host:port (a port held only by TIME_WAIT connections is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
