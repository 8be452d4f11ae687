"""Where run-batch stages a URL output: the private folders and files under an --output-tmp-dir."""

from __future__ import annotations

from pathlib import Path

from services.cli.run_batch.locations import STAGING_PREFIX


def staging_dirs(base: Path) -> list[Path]:
    return sorted(base.glob(STAGING_PREFIX + "*"))


def staged_files(base: Path) -> list[Path]:
    return sorted(f for d in staging_dirs(base) for f in d.iterdir())
