"""A real headless Chromium for the console's tests, driven by Playwright.

Browser downloads are not possible where these tests run, so Playwright launches the system's
Chromium (Debian's `chromium` package). On a fresh machine it is installed here with apt-get; when
that fails the test fails with apt-get's own words: a browser test must never be skipped quietly.

`Watched` wraps a page and records what must never happen on a console page: uncaught exceptions,
console errors, dialogs (an `alert` would be an XSS firing). A test names the HTTP statuses it
provokes on purpose (a wrong key's 401), since Chromium reports those as console errors too.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from playwright.async_api import ConsoleMessage, Dialog, Error, Page

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
_APT_TIMEOUT_S = 900


def find_chromium() -> str | None:
    for path in CHROMIUM_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def ensure_chromium() -> str:
    """The path of the system's Chromium, installing Debian's package first when it is missing."""
    found = find_chromium()
    if found is not None:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    # Wait for a concurrent apt/dpkg run instead of failing on its lock.
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [
        [*sudo, "apt-get", *lock, "update"],
        [*sudo, "apt-get", *lock, "install", "-y", "chromium"],
    ]
    for step in steps:
        try:
            done = subprocess.run(
                step, capture_output=True, text=True, env=env, timeout=_APT_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(
                f"could not install Chromium for the browser tests: {' '.join(step)}: {exc}"
            ) from exc
        if done.returncode != 0:
            raise RuntimeError(
                f"could not install Chromium for the browser tests: {' '.join(step)} exited {done.returncode}:\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
    found = find_chromium()
    if found is None:
        raise RuntimeError(
            "apt-get installed chromium, yet no chromium executable was found in "
            f"{', '.join(CHROMIUM_CANDIDATES)} or on PATH"
        )
    return found


_RESOURCE_STATUS = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


@dataclass
class Watched:
    """A page and the problems seen on it; `assert_clean()` fails the test on any unexpected one."""

    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)
    _tasks: set[asyncio.Future[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", self._page_error)
        self.page.on("dialog", self._dialog)

    def expect_status(self, *statuses: int) -> None:
        """Statuses this test provokes on purpose: their 'Failed to load resource' lines are not errors."""
        self.expected_statuses.update(statuses)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning") or message.type == "assert":
            text = message.text
            status = _RESOURCE_STATUS.search(text)
            if status and int(status.group(1)) in self.expected_statuses:
                return
            self.errors.append(f"console.{message.type}: {text} ({message.location.get('url')})")

    def _page_error(self, error: Error) -> None:
        self.errors.append(f"uncaught: {error.message}")

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        # Handlers are plain callbacks; dismissing is a coroutine, so it runs as a task of its own.
        self._tasks.add(asyncio.ensure_future(dialog.dismiss()))

    def assert_clean(self) -> None:
        assert not self.dialogs, f"dialogs opened (an injected script ran?): {self.dialogs}"
        assert not self.errors, "errors on the page:\n" + "\n".join(self.errors)
