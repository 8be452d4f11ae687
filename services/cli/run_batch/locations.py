"""Where input comes from and output goes: a local path or an http(s) URL."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def is_url(location: str) -> bool:
    return location[:8].lower().startswith(("http://", "https://"))


def redact(url: str) -> str:
    """A URL fit for messages: presigned URLs carry credentials in their query string."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # no user:password either
    return urlunsplit((parts.scheme, host, parts.path, "…" if parts.query else "", ""))


def staging_path(url: str, tmp_dir: Path | None) -> Path:
    """The local file an upload is built in: a name derived from the URL, so `--resume` finds it.

    The query string is left out of the name because presigned URLs get a new signature each
    time they are issued, and a rerun with a fresh URL for the same object must resume.
    """
    parts = urlsplit(url)
    key = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, "", ""))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = Path(parts.path).name or "output"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64]
    return (tmp_dir or Path(tempfile.gettempdir())) / f"offhours-run-batch-{digest}-{safe}"
