"""Run an `offhours` command as a child process: for tests that SIGKILL services, and benchmarks.

The child is configured only through the environment (`settings_env`), the way offhours reads
configuration, so what runs is exactly what a deployment runs. Each child serves /healthz on a
port of its own, which is also how `start()` knows it is up.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
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


_FOREIGN_ENV = ("OFFHOURS_", "AWS_", "S3_", "MONGODB_", "KAFKA_")


class ServiceProcess:
    """`offhours <command> ... --metrics-port P` started with `start()`, stopped with `stop()` or `kill()`."""

    def __init__(
        self, settings: Settings, command: Sequence[str], *, name: str | None = None, log_file: Path | None = None,
        env: dict[str, str] | None = None, port: int | None = None, port_flag: str = "--metrics-port",
    ) -> None:
        self.settings = settings
        self.command = list(command)
        self.name = name or " ".join(command)
        self.log_file = log_file
        self.extra_env = env or {}
        # A fixed port survives restarts (a client keeps its URL); otherwise each spawn picks a free one.
        self._fixed_port = port
        self.port = port or free_port()
        self.port_flag = port_flag
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @classmethod
    def dispatcher(cls, settings: Settings, **kw: object) -> ServiceProcess:
        return cls(settings, ["dispatcher"], name="dispatcher", **kw)  # type: ignore[arg-type]

    @classmethod
    def worker(cls, settings: Settings, model: str, *extra: str, **kw: object) -> ServiceProcess:
        return cls(settings, ["worker", "--model", model, *extra], name=f"worker {model}", **kw)  # type: ignore[arg-type]

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> Self:
        """Start the child without waiting for it (see `wait_healthy`)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
        env.update(settings_env(self.settings))
        env.update(self.extra_env)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        if self.log_file is not None:
            self._log = self.log_file.open("ab")
        self.port = self._fixed_port or free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", *self.command, self.port_flag, str(self.port)],
            env=env,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
        )
        return self

    async def start(self, timeout_s: float = 120.0) -> Self:
        self.spawn()
        await self.wait_healthy(timeout_s)
        return self

    async def wait_healthy(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} (log: {self.log_file})")
                try:
                    async with session.get(f"{self.ops_url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not healthy after {timeout_s}s (log: {self.log_file})")
                await asyncio.sleep(0.1)

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{self.ops_url}/metrics") as resp:
            return await resp.text()

    def _status_field(self, name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{name} not found in /proc/{self.pid}/status")

    def peak_rss_bytes(self) -> int:
        """Peak resident set size so far (VmHWM)."""
        return self._status_field("VmHWM")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the crash case, no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit status."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()
        return None if self.proc is None else self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
