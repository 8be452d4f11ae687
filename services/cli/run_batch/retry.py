"""`--retry-failed`: run again only the lines whose earlier outcome was retriable, then rewrite
the output and error files so that every input line's result is still there exactly once.

Retriable (resume.is_retriable): the error codes `batch_cancelled`, `batch_expired`,
`engine_unavailable` and `engine_error`, and any answer with status 408, 429 or 5xx. Validation
errors and other 4xx answers are the request's own fault and would fail again: they stay.
Lines with no result at all (a run that stopped before the end) are run too.

Like `--resume`, it relies on each result file being in input order with the input line number
in every line's `id`: a merge of the input with the existing files picks the lines to run, in
constant memory, and a second merge of the existing files with the new results writes the new
files. The new results go to temporary files next to the outputs and the rewritten files replace
the old ones only once complete, so an interrupted retry leaves the old files as they were.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from schemas.line_validation import LineIssue, ValidLine
from services.cli.run_batch.errors import RunBatchError
from services.cli.run_batch.resume import WrittenFile, WrittenLine, count_line
from services.inference.pipeline import PipelineStats


class RetrySelection:
    """Merges the existing files with the input: `pick(item)` is True for a line to run again.

    Items must come in input order. A line picked is one whose written result is a retriable
    failure, or one with no result. When a line has a result in both files (a success and an
    error: left by a retry interrupted between its two renames) the success counts.
    """

    def __init__(self, files: list[WrittenFile]) -> None:
        self.files = files
        self.retriable = 0  # lines picked for their retriable failure
        self.missing = 0  # lines picked for having no result
        self.doubled = 0  # lines with a result in both files, which the rewrite must mend

    @property
    def id_prefix(self) -> str | None:
        return next((f.id_prefix for f in self.files if f.id_prefix), None)

    def pick(self, item: ValidLine | LineIssue) -> bool:
        n = item.number
        found: WrittenLine | None = None
        for f in self.files:
            head = f.head
            if head is None:
                continue
            if head.number < n:
                raise _changed(f, f"it answers input line {head.number}, which is blank or missing now")
            if head.number == n:
                if head.custom_id != item.custom_id:
                    raise _changed(f, f"it answers input line {n} with custom_id {head.custom_id!r}, "
                                      f"but that line now has custom_id {item.custom_id!r}")
                if found is not None:
                    self.doubled += 1
                if found is None or found.code is not None:
                    found = head
                f.advance()
        if found is None:
            self.missing += 1
            return True
        if found.code is not None and found.retriable:
            self.retriable += 1
            return True
        return False

    def finish(self) -> None:
        """Called at the end of the input: every written line must have met its input line."""
        for f in self.files:
            if f.head is not None:
                raise _changed(f, f"it answers input line {f.head.number}, past the end of the input")

    def close(self) -> None:
        for f in self.files:
            f.close()


def _changed(f: WrittenFile, why: str) -> RunBatchError:
    return RunBatchError(
        f"cannot retry: {f.path} does not match the input ({why}). Was it written from another input? "
        "The files are unchanged."
    )


def _merged(earlier: list[WrittenFile], retried: list[WrittenFile]) -> Iterator[WrittenLine]:
    """Each line number's one result, in order: the retry's if there is one, else the earlier
    success, else the earlier error."""
    files = earlier + retried
    fresh = set(map(id, retried))
    while True:
        heads = [f.head for f in files if f.head is not None]
        if not heads:
            return
        n = min(h.number for h in heads)
        chosen: WrittenLine | None = None
        chosen_fresh = False
        for f in files:
            head = f.head
            if head is None or head.number != n:
                continue
            is_fresh = id(f) in fresh
            if chosen is None or (is_fresh and not chosen_fresh) or (
                    is_fresh == chosen_fresh and chosen.code is not None and head.code is None):
                chosen, chosen_fresh = head, is_fresh
            f.advance()
        assert chosen is not None
        yield chosen


def rewrite(
    earlier: list[Path], retried: list[Path], output: Path, errors: Path | None,
) -> tuple[PipelineStats, list[int]]:
    """Write the merge of the earlier files and the retry's results to `output` (and failures to
    `errors`, when given), each replaced only once its new content is complete; the tally of what
    the files now hold, and the number of lines of each."""
    targets = [output] + ([errors] if errors is not None else [])
    news = [p.with_name(f".{p.name}.retry-new") for p in targets]
    stats = PipelineStats()
    lines = [0] * len(targets)
    readers: list[WrittenFile] = []
    try:
        readers_earlier = [WrittenFile(p) for p in earlier]
        readers_retried = [WrittenFile(p) for p in retried]
        readers = readers_earlier + readers_retried
        with contextlib.ExitStack() as stack:
            outs = [stack.enter_context(open(p, "wb", buffering=1 << 20)) for p in news]
            for line in _merged(readers_earlier, readers_retried):
                i = 0 if line.code is None else len(outs) - 1
                outs[i].write(line.data + b"\n")
                lines[i] += 1
                count_line(stats, line)
            for f in outs:
                f.flush()
                os.fsync(f.fileno())
        # The output first: if the process dies between the two renames, a retried line that
        # succeeded is in both files, and the next --retry-failed or read keeps the success.
        for new, target in zip(news, targets, strict=True):
            _keep_mode(target, new)
            os.replace(new, target)
    except OSError as exc:
        raise RunBatchError(f"cannot rewrite the result files: {exc.strerror or exc}; "
                            "the files are unchanged where not yet replaced") from exc
    finally:
        for r in readers:
            r.close()
        for p in news:
            with contextlib.suppress(OSError):
                p.unlink()
    return stats, lines


def _keep_mode(old: Path, new: Path) -> None:
    with contextlib.suppress(OSError):
        os.chmod(new, os.stat(old).st_mode & 0o7777)
