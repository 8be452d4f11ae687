"""Run `offhours api` as a child process: for `offhours dev`, tests that kill it, and benchmarks.

The child gets its configuration the only way offhours reads configuration, through
environment variables (`settings_env`), so what runs is exactly what a deployment runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import IO, Self

import aiohttp
from pydantic import AliasChoices, SecretStr
from pydantic_settings import NoDecode

from services.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make a child process's `Settings()` equal `settings`.

    Fields left at None are omitted (the child then uses the field's default).
    """
    env: dict[str, str] = {}
    prefix = Settings.model_config.get("env_prefix", "")
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None:
            continue
        alias = info.validation_alias
        var = str(alias.choices[0]) if isinstance(alias, AliasChoices) else f"{prefix}{name}".upper()
        if isinstance(value, list | tuple | set | frozenset | dict):
            # pydantic-settings reads complex fields as JSON, except NoDecode ones (comma lists here).
            items = [_env_value(v) for v in value] if not isinstance(value, dict) else value
            env[var] = ",".join(items) if NoDecode in info.metadata else json.dumps(items)
        else:
            env[var] = _env_value(value)
    return env


def _env_value(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiProcess:
    """`offhours api` on 127.0.0.1:<port>, started with `start()`, stopped with `stop()` or `kill()`."""

    def __init__(
        self, settings: Settings, *, port: int | None = None, log_file: Path | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.settings = settings
        self.startup_timeout = startup_timeout
        self.port = port or free_port()
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def spawn(self) -> None:
        """Start the child; `start()` also waits until it answers /healthz."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFHOURS_", "AWS_", "S3_", "MONGODB_"))}
        env.update(settings_env(self.settings))
        if self.log_file is not None:
            self._log = self.log_file.open("ab")
        # Popen only forks and execs; it does not wait for the child.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "api", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
        )

    async def start(self) -> Self:
        self.spawn()
        try:
            async with asyncio.timeout(self.startup_timeout):
                await self._wait_healthy()
        except TimeoutError:
            self.kill()
            raise TimeoutError(
                f"offhours api not healthy after {self.startup_timeout}s (log: {self.log_file})"
            ) from None
        return self

    async def _wait_healthy(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"offhours api exited with {self.proc.returncode} (log: {self.log_file})")
                try:
                    async with session.get(f"{self.base_url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    def peak_rss_bytes(self) -> int:
        """The child's peak resident set size so far (VmHWM), read from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmHWM not found in /proc status")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found in /proc status")

    def kill(self) -> None:
        """SIGKILL: the crash case — no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit within `timeout`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
