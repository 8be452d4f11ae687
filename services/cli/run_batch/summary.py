"""The closing report: counts, failures by code, tokens, speed, and where the results are."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.cli.run_batch.progress import format_duration, format_rate
from services.inference.pipeline import PipelineStats


@dataclass(slots=True)
class Destination:
    label: str  # "output", "errors"
    where: str  # a path, or a (redacted) URL
    lines: int
    note: str = ""  # e.g. "uploaded, HTTP 201" or "not uploaded: staged at …"


@dataclass(slots=True)
class Summary:
    stats: PipelineStats  # every line of the file, this run and earlier ones
    new_lines: int  # lines answered by this run
    resumed: int  # lines an earlier run had answered
    elapsed: float
    destinations: list[Destination] = field(default_factory=list)
    interrupted: bool = False
    retried: PipelineStats | None = None  # --retry-failed: the lines this run ran again

    def render(self) -> str:
        s = self.stats
        head = "stopped" if self.interrupted else "done"
        failed = f"{s.failed:,} failed"
        if s.failures_by_code:
            codes = sorted(s.failures_by_code.items(), key=lambda kv: (-kv[1], kv[0]))
            failed += " (" + ", ".join(f"{code} {n:,}" for code, n in codes) + ")"
        lines = [
            f"offhours run-batch: {head} in {format_duration(self.elapsed)} ({self.elapsed:.2f} s)",
            f"  lines    {s.total:,} total · {s.succeeded:,} succeeded · {failed}",
        ]
        if self.resumed:
            lines.append(f"  resumed  {self.resumed:,} lines were already done by an earlier run")
        if self.retried is not None:
            r = self.retried
            lines.append(f"  retried  {r.total:,} lines: {r.succeeded:,} succeeded now · {r.failed:,} failed")
        lines.append(f"  tokens   {s.input_tokens:,} input · {s.output_tokens:,} output")
        lines.append(f"  speed    {format_rate(self.new_lines, self.elapsed)} lines/s "
                     f"({self.new_lines:,} lines this run)")
        for d in self.destinations:
            note = f" — {d.note}" if d.note else ""
            lines.append(f"  {d.label:<8} {d.where} ({d.lines:,} lines){note}")
        return "\n".join(lines)
