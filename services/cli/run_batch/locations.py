"""Where input comes from and output goes: a local path or an http(s) URL."""

from __future__ import annotations

import hashlib
import os
import stat
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


STAGING_PREFIX = "offhours-run-batch-"


def staging_name(url: str) -> str:
    """The name of the local file an upload is built in: derived from the URL, so `--resume` finds it.

    The query string is left out of the name because presigned URLs get a new signature each
    time they are issued, and a rerun with a fresh URL for the same object must resume.
    """
    parts = urlsplit(url)
    key = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, "", ""))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = Path(parts.path).name or "output"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64]
    return f"{digest}-{safe}"


def staging_dir(base: Path | None, names: list[str], *, resume: bool) -> Path:
    """The private folder the staging files of this run live in.

    A new one is made exclusively (`mkdtemp`: a random name, mode 0700) in `base`, the system temp
    folder by default, so no other user of a shared temp folder can plant a file or a link where the
    results are written, nor read them. `resume` looks first for the folder of an earlier run: ours,
    private and holding one of `names`, the newest if several.
    """
    base = base or Path(tempfile.gettempdir())
    if resume:
        earlier = _earlier_staging_dir(base, names)
        if earlier is not None:
            return earlier
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=base))


def _earlier_staging_dir(base: Path, names: list[str]) -> Path | None:
    found: list[tuple[float, str]] = []
    uid = os.getuid()
    for folder in base.glob(STAGING_PREFIX + "*"):
        try:
            st = folder.lstat()
        except OSError:
            continue
        # Someone else's folder, a link, or one others may write to: not ours to resume from.
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
            continue
        for name in names:
            try:
                fst = (folder / name).lstat()
            except OSError:
                continue
            if stat.S_ISREG(fst.st_mode) and fst.st_uid == uid:
                found.append((fst.st_mtime, str(folder)))
    return Path(max(found)[1]) if found else None
