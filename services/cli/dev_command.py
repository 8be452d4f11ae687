"""`offhours dev` — the whole stack on one machine: what `make run` starts.

It brings up the local Kafka/MongoDB/S3 stand-ins (infra/launcher.py), mints an API key,
starts every service as its own process exactly as the Procfile does in production (api,
dispatcher, one worker per model, notifier), waits until the API answers, and prints the
`base_url` to give the OpenAI SDK. Ctrl-C stops the services; the infra keeps its data in
the state folder unless `--stop-infra` is given. A port it would bind that is busy stops it
before it starts anything, with a message that says which port and how to choose another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from infra.ports import port_in_use
from services.settings import Settings, get_settings

if TYPE_CHECKING:
    from infra.launcher import Launcher

DEFAULT_MODELS = ("batch-test-model", "smollm2-135m-instruct", "all-minilm-l6-v2")
INFRA_NAMES = {"kafka": "Kafka (Tansu)", "mongo": "MongoDB (SecantusDB)", "s3": "S3 (rclone)"}
INFRA_CHECK_SECONDS = 2.0

DESCRIPTION = """\
Start the whole offhours stack locally and print the base_url for the OpenAI SDK:

  1. Kafka (Tansu), MongoDB (SecantusDB) and S3 (rclone) on 127.0.0.1 (`offhours infra up`)
  2. offhours api          Files + Batches + webhook endpoints on one port
  3. offhours dispatcher   validates, splits, collects and finalizes batches
  4. offhours worker       one process per model (--models)
  5. offhours notifier     signed webhooks

Before it starts anything it checks that the API port (--port or OFFHOURS_PORT, default 8000)
and the ports of the local servers it would start itself are free; servers already running from
the same state folder are reused. A busy port stops it with exit status 2 and a message naming
the port and how to pick another. Logs of every process go to <state-dir>/logs/. A local server
that stops while it runs is reported with the command that brings it back on its port
(`offhours infra up --state-dir ...`). Ctrl-C stops it.

example:
  offhours dev
  offhours dev --models batch-test-model,null-model --port 8001
"""


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="start the whole stack locally (local infra, api, dispatcher, workers, notifier)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="data and logs (default: .offhours)")
    parser.add_argument("--port", type=int, default=None,
                        help="API port (default: settings.port: OFFHOURS_PORT, else 8000)")
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated models to start a worker for (default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--project", default="default", help="project of the printed API key (default: default)")
    parser.add_argument("--persist", action="store_true", help="keep Kafka's data on the local S3")
    parser.add_argument("--no-notifier", action="store_true", help="do not start the notifier")
    parser.add_argument("--stop-infra", action="store_true", help="also stop Kafka/MongoDB/S3 on exit")
    parser.add_argument(
        "--exit-after-ready",
        action="store_true",
        help="print the banner and stop everything again (a smoke test of the whole stack)",
    )
    parser.set_defaults(func=_run)


def _offhours() -> list[str]:
    return [sys.executable, "-m", "services.cli.main"]


async def _mint_key(settings: Settings, project: str) -> str:
    from services.http.auth import ApiKeyStore
    from services.stores.mongo import close_database, open_database

    db = open_database(settings)
    try:
        store = ApiKeyStore(db)
        await store.ensure_indexes()
        key, _ = await store.create(project)
        return key
    finally:
        await close_database(db)


class InfraWatch:
    """Notices a local server (Kafka, MongoDB, S3) that stopped under a running `offhours dev`.

    Each crash is told once, with the command that brings the server back on its port; a server
    restarted by that command and crashed again is a new crash and is told again.
    """

    def __init__(self, launcher: Launcher, *, persist: bool) -> None:
        self.launcher = launcher
        self.persist = persist
        self._told: set[tuple[str, int]] = set()

    def restart_command(self) -> str:
        # The recorded ports are reused by `up` on the same state folder: the services find it again.
        command = f"offhours infra up --state-dir {shlex.quote(str(self.launcher.state_dir))}"
        return command + (" --persist" if self.persist else "")

    def check(self) -> list[str]:
        """One message per server that stopped since the last check."""
        notices = []
        for rec in self.launcher.gone():
            if (rec.name, rec.pid) in self._told:
                continue
            self._told.add((rec.name, rec.pid))
            notices.append(
                f"{INFRA_NAMES.get(rec.name, rec.name)} (pid {rec.pid}, port {rec.port}) is not running any more; "
                f"its log is {rec.log_file}. Bring it back with: {self.restart_command()}")
        return notices


def _busy_ports(launcher: Launcher, host: str, port: int) -> list[str]:
    """What stands in the way of starting: one message per busy port this run would bind."""
    from infra.launcher import LOOPBACK

    busy = []
    if port_in_use(host, port):
        busy.append(f"port {port} is busy: the API would listen there (is another `offhours dev` running?). "
                    f"Pick another with --port N or OFFHOURS_PORT=N, e.g. `offhours dev --port {port + 1}`")
    # Servers recorded in the state folder and still running are reused: only those it would start count.
    for c in asyncio.run(launcher.status()):
        if c.state in ("stopped", "not-ours") and c.port is not None and port_in_use(LOOPBACK, c.port):
            busy.append(
                f"port {c.port} is busy: offhours dev would start {INFRA_NAMES[c.name]} there. Start it on "
                f"another port first, e.g. `offhours infra up --{c.name}-port {c.port + 1} --state-dir "
                f"{launcher.state_dir}`; offhours dev then reuses it")
    return busy


async def _wait_healthy(url: str, children: list[Child], api: Child, within_s: float) -> None:
    """Until the API this run started answers `url`.

    The port was free when the run began; an answer while its own API process still runs is that
    process's (one that failed to bind exits, and a dead child ends the wait with its log).
    """
    import aiohttp

    assert api.proc is not None
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; see {child.log}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200 and api.proc.poll() is None:
                        return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{url} did not become healthy within {within_s:.0f}s")


def _start(child: Child, env: dict[str, str]) -> None:
    child.log.parent.mkdir(parents=True, exist_ok=True)
    log = open(child.log, "ab")  # noqa: SIM115 - handed to the child for its lifetime
    child.proc = subprocess.Popen(child.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()


def _stop_all(children: list[Child], grace: float = 15.0) -> None:
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def _run(args: argparse.Namespace) -> int:
    from infra.launcher import InfraError, Launcher
    from services.inference.registry import load_registry

    base = get_settings()
    state_dir = (args.state_dir or base.state_dir).resolve()
    port = args.port or base.port
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    known = load_registry(base.models_file)
    unknown = [m for m in models if m not in known]
    if unknown:
        print(f"offhours dev: unknown model(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}", file=sys.stderr)
        return 2

    launcher = Launcher(base, state_dir=state_dir, persist=args.persist)
    busy = _busy_ports(launcher, base.host, port)
    if busy:
        for problem in busy:
            print(f"offhours dev: {problem}", file=sys.stderr)
        print("offhours dev: nothing was started", file=sys.stderr)
        return 2
    print(f"starting Kafka, MongoDB and S3 under {state_dir} ...", flush=True)
    try:
        info = asyncio.run(launcher.up())
    except InfraError as exc:  # e.g. a port taken since the check above
        print(f"offhours dev: {exc}", file=sys.stderr)
        return 1
    settings = info.apply(base)
    env = {**os.environ, **info.env(settings), "OFFHOURS_STATE_DIR": str(state_dir), "OFFHOURS_PORT": str(port)}

    logs = state_dir / "logs"
    children = [Child("api", [*_offhours(), "api", "--port", str(port)], logs / "api.log"),
                Child("dispatcher", [*_offhours(), "dispatcher"], logs / "dispatcher.log")]
    children += [Child(f"worker[{m}]", [*_offhours(), "worker", "--model", m], logs / f"worker-{m}.log")
                 for m in models]
    if not args.no_notifier:
        children.append(Child("notifier", [*_offhours(), "notifier"], logs / "notifier.log"))

    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    rc = 0
    try:
        for child in children:
            _start(child, env)
        key = asyncio.run(_mint_key(settings, args.project))
        base_url = f"http://{settings.host}:{port}/v1"
        asyncio.run(_wait_healthy(f"http://{settings.host}:{port}/healthz", children, children[0], within_s=180))
        print(_banner(base_url, key, children, state_dir), flush=True)
        if args.exit_after_ready:
            return 0
        watch = InfraWatch(launcher, persist=info.persist)
        next_infra_check = 0.0
        while not stopping:
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    print(f"{child.name} exited with {child.proc.returncode}; see {child.log}", file=sys.stderr)
                    stopping = True
                    rc = 1
            if time.monotonic() >= next_infra_check:
                # Nothing here restarts a local server (it keeps data the user may want to look
                # at first): the person at the terminal learns which one is gone and the command.
                for notice in watch.check():
                    print(f"offhours dev: {notice}", file=sys.stderr, flush=True)
                next_infra_check = time.monotonic() + INFRA_CHECK_SECONDS
            time.sleep(0.5)
    except RuntimeError as exc:
        print(f"offhours dev: {exc}", file=sys.stderr)
        rc = 1
    finally:
        print("stopping services ...", flush=True)
        _stop_all(children)
        if args.stop_infra:
            asyncio.run(launcher.down())
        else:
            print(f"Kafka/MongoDB/S3 keep running; stop them with: offhours infra down --state-dir {state_dir}")
    return rc


def _banner(base_url: str, key: str, children: list[Child], state_dir: Path) -> str:
    procs = "\n".join(f"  {c.name:<32} pid {c.proc.pid if c.proc else '-':<8} log {c.log}" for c in children)
    return f"""
offhours is running.

  base_url: {base_url}
  api key:  {key}

{procs}

Try it:
  from openai import OpenAI
  client = OpenAI(base_url="{base_url}", api_key="{key}")
  f = client.files.create(file=open("examples/ds-test.jsonl", "rb"), purpose="batch")
  b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/ds-test", completion_window="24h")
  print(client.batches.retrieve(b.id).status)

Press Ctrl-C to stop (data stays in {state_dir}).
"""
