"""Managed inference servers: start one from a preset command line, wait until it is healthy,
restart it when it dies, stop it on close.

Presets name the real entry points and flags of each server:

- `fastdeploy`: `python -m fastdeploy.entrypoints.openai.api_server` (health `/health`). It needs
  a GPU and FastDeploy's own wheels (not on PyPI), so it is unit-tested by its command line only.
- `vllm`: `python -m vllm.entrypoints.openai.api_server` (the module behind `vllm serve`), `/health`.
- `sglang`: `python -m sglang.launch_server`, `/health`.
- `llama-cpp`: `python -m llama_cpp.server` on a GGUF (health `/v1/models`, which answers only
  once the model is loaded). It runs on a CPU, so the supervision code is tested with it.

The server runs in its own process group, so stopping it also stops the worker processes
GPU servers fork. Its output goes to a log file whose tail is quoted when it fails to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from services.inference.engines.model_files import resolve_model_path
from services.settings import get_settings

log = logging.getLogger(__name__)

PresetName = Literal["fastdeploy", "vllm", "sglang", "llama-cpp"]


class ManagedServerConfig(BaseModel):
    """The `[models.NAME.server]` table of an upstream model."""

    model_config = ConfigDict(extra="forbid")

    preset: PresetName
    # What the server loads: a hub id or directory for GPU servers; a GGUF path or a
    # `pkg:` reference (see model_files) for llama-cpp.
    model: str
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)  # 0: a free port, chosen once and kept across restarts
    served_model_name: str | None = None
    # Engine sizing, mapped to each server's own flag names.
    max_num_seqs: int | None = Field(None, ge=1)
    max_model_len: int | None = Field(None, ge=1)
    tensor_parallel_size: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    quantization: str | None = None
    n_threads: int | None = Field(None, ge=1)  # llama-cpp only
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    python: str | None = None  # interpreter for `python -m ...`; default: this one
    startup_timeout_s: float = Field(600.0, gt=0)
    health_interval_s: float = Field(0.5, gt=0)
    restart_backoff_s: float = Field(1.0, ge=0)
    restart_backoff_max_s: float = Field(30.0, ge=0)
    # Consecutive failed restarts after which the server is given up (requests then fail
    # with EngineUnavailable instead of waiting forever).
    max_restarts: int = Field(5, ge=0)
    stop_timeout_s: float = Field(15.0, gt=0)
    log_file: Path | None = None


class ServerStartError(RuntimeError):
    pass


class ServerUnavailable(RuntimeError):
    """The managed server is down and its supervisor has given up restarting it."""


# --- presets ------------------------------------------------------------------------------


def _flag(argv: list[str], name: str, value: object) -> None:
    if value is not None:
        argv += [name, str(value)]


def _reject(config: ManagedServerConfig, fields: tuple[str, ...]) -> None:
    given = [f for f in fields if getattr(config, f) is not None]
    if given:
        raise ValueError(f"the {config.preset!r} preset has no equivalent of {', '.join(given)}")


def _vllm_style(module: str) -> Callable[[ManagedServerConfig, str, int], list[str]]:
    """FastDeploy's api_server deliberately mirrors vLLM's flags, so one builder serves both."""

    def build(config: ManagedServerConfig, python: str, port: int) -> list[str]:
        _reject(config, ("n_threads",))
        argv = [python, "-m", module, "--model", config.model, "--host", config.host, "--port", str(port)]
        _flag(argv, "--served-model-name", config.served_model_name)
        _flag(argv, "--max-num-seqs", config.max_num_seqs)
        _flag(argv, "--max-model-len", config.max_model_len)
        _flag(argv, "--tensor-parallel-size", config.tensor_parallel_size)
        _flag(argv, "--gpu-memory-utilization", config.gpu_memory_utilization)
        _flag(argv, "--quantization", config.quantization)
        return argv

    return build


_fastdeploy = _vllm_style("fastdeploy.entrypoints.openai.api_server")
_vllm = _vllm_style("vllm.entrypoints.openai.api_server")


def _sglang(config: ManagedServerConfig, python: str, port: int) -> list[str]:
    _reject(config, ("n_threads",))
    argv = [python, "-m", "sglang.launch_server", "--model-path", config.model,
            "--host", config.host, "--port", str(port)]
    _flag(argv, "--served-model-name", config.served_model_name)
    _flag(argv, "--max-running-requests", config.max_num_seqs)
    _flag(argv, "--context-length", config.max_model_len)
    _flag(argv, "--tp-size", config.tensor_parallel_size)
    _flag(argv, "--mem-fraction-static", config.gpu_memory_utilization)
    _flag(argv, "--quantization", config.quantization)
    return argv


def _llama_cpp(config: ManagedServerConfig, python: str, port: int) -> list[str]:
    _reject(config, ("max_num_seqs", "tensor_parallel_size", "gpu_memory_utilization", "quantization"))
    gguf = resolve_model_path(config.model)
    argv = [python, "-m", "llama_cpp.server", "--model", str(gguf), "--host", config.host, "--port", str(port)]
    _flag(argv, "--model_alias", config.served_model_name)
    _flag(argv, "--n_ctx", config.max_model_len)
    _flag(argv, "--n_threads", config.n_threads)
    return argv


@dataclass(frozen=True)
class ServerPreset:
    name: str
    health_path: str
    build: Callable[[ManagedServerConfig, str, int], list[str]]


PRESETS: dict[str, ServerPreset] = {
    "fastdeploy": ServerPreset("fastdeploy", "/health", _fastdeploy),
    "vllm": ServerPreset("vllm", "/health", _vllm),
    "sglang": ServerPreset("sglang", "/health", _sglang),
    "llama-cpp": ServerPreset("llama-cpp", "/v1/models", _llama_cpp),
}


def server_command(config: ManagedServerConfig, port: int) -> list[str]:
    """The argv a preset starts (raises ValueError for an option the preset cannot express)."""
    preset = PRESETS[config.preset]
    return [*preset.build(config, config.python or sys.executable, port), *config.extra_args]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


# --- supervisor ---------------------------------------------------------------------------


class ManagedServer:
    """One supervised server process. `start()` returns once it is healthy."""

    def __init__(self, config: ManagedServerConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.preset = PRESETS[config.preset]
        self.port = config.port
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._failed: BaseException | None = None
        self._state_changed = asyncio.Event()
        self._closing = False
        self._watcher: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.log_path = config.log_file or (get_settings().state_dir / "servers" / f"{name}.log")

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        if self.port == 0:
            self.port = free_port(self.config.host)
        self.command = server_command(self.config, self.port)  # validate before spawning anything
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            await self._spawn_until_healthy()
        except BaseException:
            await self.close()
            raise
        self._watcher = asyncio.create_task(self._watch(), name=f"supervise-{self.name}")

    async def wait_ready(self) -> None:
        """Return once the server is healthy; ServerUnavailable once it is given up or stopped.

        Callers bound the wait with `asyncio.timeout`.
        """
        while True:
            if self._failed is not None:
                raise ServerUnavailable(f"managed server {self.name!r} is down: {self._failed}")
            if self._closing:
                raise ServerUnavailable(f"managed server {self.name!r} is stopped")
            if self._ready.is_set():
                return
            self._state_changed.clear()
            await self._state_changed.wait()

    def _set_state(self, *, ready: bool) -> None:
        if ready:
            self._ready.set()
        else:
            self._ready.clear()
        self._state_changed.set()

    def _open_log(self) -> BinaryIO:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed by the caller's with-block
        log_file.write(f"\n--- offhours: starting {' '.join(self.command)}\n".encode())
        log_file.flush()
        return log_file

    async def _spawn_until_healthy(self) -> None:
        with self._open_log() as log_file:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self.config.env},
                start_new_session=True,
            )
        log.info("started %s server %r (pid %d) on port %d", self.preset.name, self.name, self._proc.pid, self.port)
        await self._wait_healthy(self._proc)
        self._set_state(ready=True)

    async def _wait_healthy(self, proc: asyncio.subprocess.Process) -> None:
        assert self._session is not None
        url = self.base_url + self.preset.health_path
        deadline = time.monotonic() + self.config.startup_timeout_s
        while True:
            if proc.returncode is not None:
                raise ServerStartError(
                    f"{self.preset.name} server {self.name!r} exited with code {proc.returncode} while starting; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}")
            try:
                async with self._session.get(url) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                await self._kill(proc)
                raise ServerStartError(
                    f"{self.preset.name} server {self.name!r} was not healthy at {url} within "
                    f"{self.config.startup_timeout_s:.0f}s; log {self.log_path}:\n{_tail(self.log_path)}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), self.config.health_interval_s)

    async def _watch(self) -> None:
        while not self._closing:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._closing:
                return
            self._set_state(ready=False)
            log.warning("%s server %r (pid %d) exited with code %s; restarting", self.preset.name, self.name,
                        proc.pid, code)
            failures = 0
            while not self._closing:
                delay = min(self.config.restart_backoff_max_s, self.config.restart_backoff_s * 2**failures)
                await asyncio.sleep(delay)
                if self._closing:
                    return
                try:
                    await self._spawn_until_healthy()
                    self.restarts += 1
                    break
                except ServerStartError as exc:
                    failures += 1
                    log.error("restart %d of %r failed: %s", failures, self.name, exc)
                    if failures > self.config.max_restarts:
                        self._failed = exc
                        self._state_changed.set()
                        return

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            # The leader is gone; children it forked (GPU servers' workers) may not be.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        for sig, wait in ((signal.SIGTERM, self.config.stop_timeout_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                return
            except TimeoutError:
                continue

    async def close(self) -> None:
        self._closing = True
        self._set_state(ready=False)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._proc is not None:
            await self._kill(self._proc)
        if self._session is not None:
            await self._session.close()
            self._session = None
