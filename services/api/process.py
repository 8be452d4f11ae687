"""`offhours api` as a child process (services/runtime/child_process.py): for tests that kill it, and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from services.runtime.child_process import ServiceProcess
from services.settings import Settings


class ApiProcess(ServiceProcess):
    """`offhours api` on 127.0.0.1:<port>; /healthz is on the API port itself."""

    def __init__(
        self, settings: Settings, *, port: int | None = None, log_file: Path | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(settings, ["api", "--host", "127.0.0.1"], name="offhours api", log_file=log_file,
                         port=port, port_flag="--port")
        self.startup_timeout = startup_timeout

    @property
    def base_url(self) -> str:
        return self.ops_url

    async def start(self, timeout_s: float | None = None) -> Self:
        return await super().start(self.startup_timeout if timeout_s is None else timeout_s)
