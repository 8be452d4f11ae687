"""`offhours dev` — the whole stack on one machine: what `make run` starts.

It brings up the local Kafka/MongoDB/S3 stand-ins (infra/launcher.py), mints an API key,
starts every service as its own process exactly as the Procfile does in production (api,
dispatcher, one worker per model, notifier), waits until the API answers, and prints the
`base_url` to give the OpenAI SDK. Ctrl-C stops the services; the infra keeps its data in
the state folder unless `--stop-infra` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.settings import Settings, get_settings

DEFAULT_MODELS = ("batch-test-model", "smollm2-135m-instruct", "all-minilm-l6-v2")

DESCRIPTION = """\
Start the whole offhours stack locally and print the base_url for the OpenAI SDK:

  1. Kafka (Tansu), MongoDB (SecantusDB) and S3 (rclone) on 127.0.0.1 (`offhours infra up`)
  2. offhours api          Files + Batches + webhook endpoints on one port
  3. offhours dispatcher   validates, splits, collects and finalizes batches
  4. offhours worker       one process per model (--models)
  5. offhours notifier     signed webhooks

Logs of every process go to <state-dir>/logs/. Press Ctrl-C to stop.

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
    parser.add_argument("--port", type=int, default=None, help="API port (default: settings.port, 8000)")
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


async def _wait_healthy(url: str, children: list[Child], within_s: float) -> None:
    import aiohttp

    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with {child.proc.returncode}; see {child.log}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
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
    from infra.launcher import Launcher
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
    print(f"starting Kafka, MongoDB and S3 under {state_dir} ...", flush=True)
    info = asyncio.run(launcher.up())
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
        asyncio.run(_wait_healthy(f"http://{settings.host}:{port}/healthz", children, within_s=180))
        print(_banner(base_url, key, children, state_dir), flush=True)
        if args.exit_after_ready:
            return 0
        while not stopping:
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    print(f"{child.name} exited with {child.proc.returncode}; see {child.log}", file=sys.stderr)
                    stopping = True
                    rc = 1
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
