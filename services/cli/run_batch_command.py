"""`offhours run-batch` — run a JSONL batch file through one model, offline (flags and help).

The work is in services/cli/run_batch/; this module only turns flags into RunBatchOptions.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HELP = "Run a JSONL batch file (local path or URL) through one model, with no services."

DESCRIPTION = """\
Reads an OpenAI Batch input file, one request per line

  {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
   "body": {"model": "batch-test-model", "messages": [{"role": "user", "content": "Hi"}]}}

(body.model may be left out, as in FastDeploy's files: it is then MODEL), runs every line through MODEL, and writes one result line per input line, in input order:

  {"id": "batch_req_…", "custom_id": "r1", "response": {"status_code": 200,
   "request_id": "…", "body": {…}}, "error": null}

A line that cannot run (bad JSON, duplicate custom_id, wrong model, …) gets an error line
with its line number and a code, and the run goes on. Memory stays bounded whatever the
file size. After a crash, SIGKILL or Ctrl-C, rerun the same command with --resume: it
finishes the file with every line's result present exactly once. After transient failures
(an engine that was down, 429/5xx answers), rerun it with --retry-failed: only those lines
run again, and the files are rewritten with every line's result still present exactly once.
"""

EPILOG = """\
examples:
  # the shipped example file through the test model (no inference, fixed answer)
  offhours run-batch -i examples/chat-test.jsonl -o /tmp/out.jsonl --model batch-test-model

  # failures in their own file, as the Batch API does; at most 8 requests at once
  offhours run-batch -i requests.jsonl -o results.jsonl --error-file errors.jsonl \\
      --model batch-test-model --max-concurrency 8

  # URL in (streamed GET), URL out (PUT once complete; any 2xx is success)
  offhours run-batch -i https://example.com/batches/in.jsonl \\
      -o 'https://bucket.s3.amazonaws.com/out.jsonl?X-Amz-Signature=…' \\
      --output-tmp-dir /data/tmp --model batch-test-model

  # interrupted? the same command again, with --resume
  offhours run-batch -i requests.jsonl -o results.jsonl --model batch-test-model --resume

  # FastDeploy's input format: no body.model in the lines, the model comes from --model
  offhours run-batch -i examples/fastdeploy-run-batch.jsonl -o /tmp/out.jsonl --model batch-test-model

  # some lines got 503s or timeouts? run only those again; the files are rewritten in place
  offhours run-batch -i requests.jsonl -o results.jsonl --error-file errors.jsonl \\
      --model my-upstream --retry-failed

exit status:
  0    every line succeeded
  1    the run completed, but some lines failed (see their error lines)
  2    usage or I/O error: bad flag, unknown model, unreadable input, failed upload
  130  interrupted by Ctrl-C (143: by SIGTERM); rerun with --resume to finish

See docs/run-batch.md for the file formats, error codes and the resume rules.
"""


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _interval(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "run-batch", help=HELP, description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    files = p.add_argument_group("input and output")
    files.add_argument(
        "-i", "--input-file", required=True, metavar="INPUT",
        help="the batch input: a local JSONL file, - for standard input, or an http(s) URL read by a "
             "streaming GET (e.g. -i requests.jsonl, -i https://host/in.jsonl)")
    files.add_argument(
        "-o", "--output-file", required=True, metavar="OUTPUT",
        help="where results go: a local path (written as the run goes) or an http(s) URL that gets the "
             "whole file by PUT at the end, any 2xx being success (e.g. -o results.jsonl). An existing "
             "file is overwritten unless --resume is given")
    files.add_argument(
        "--error-file", metavar="PATH",
        help="write failed lines to this file (local path or URL), as the Batch API does; without it, "
             "they go to OUTPUT in input order, as FastDeploy does (e.g. --error-file errors.jsonl)")
    files.add_argument(
        "--output-tmp-dir", type=Path, metavar="DIR",
        help="folder in which a private folder (mode 0700, a random name) holds the local copy of a URL "
             "output before its upload; --resume finds it again (default: the system temp folder; e.g. "
             "--output-tmp-dir /data/tmp)")

    run = p.add_argument_group("model and requests")
    run.add_argument(
        "--model", required=True, metavar="MODEL",
        help="the model to run, a name in the model registry; a line's body.model must be this name, "
             "and a line without body.model gets it, as FastDeploy does (e.g. --model batch-test-model)")
    run.add_argument(
        "--models-file", type=Path, metavar="PATH",
        help="the model registry to read instead of the built-in services/inference/models.toml "
             "(default: OFFHOURS_MODELS_FILE; e.g. --models-file my-models.toml)")
    run.add_argument(
        "--endpoint", metavar="URL",
        help="hold every line's url to this endpoint, as a Batch API batch does; without it any endpoint "
             "the model serves is accepted (e.g. --endpoint /v1/chat/completions)")
    run.add_argument(
        "--max-concurrency", type=_positive_int, metavar="N",
        help="requests in flight at once (default: the model's own setting; e.g. --max-concurrency 16)")
    run.add_argument(
        "--max-line-bytes", type=_positive_int, metavar="N",
        help="longest input line accepted; longer ones get a line_too_large error line "
             "(default: OFFHOURS_MAX_LINE_BYTES, 6 MiB; e.g. --max-line-bytes 1048576)")

    rec = p.add_argument_group("resuming and HTTP")
    rec.add_argument(
        "--resume", action="store_true",
        help="continue the output an earlier run of the same command left (after a crash, SIGKILL or "
             "Ctrl-C): lines already written are not run again, a torn last line is repaired, and a URL "
             "output whose upload failed is uploaded (e.g. the same command + --resume)")
    rec.add_argument(
        "--retry-failed", action="store_true",
        help="run again only the lines of the earlier run's local OUTPUT/--error-file whose failure was "
             "transient (engine_unavailable, engine_error, batch_cancelled, batch_expired, or an answer "
             "with status 408, 429 or 5xx; never a validation error or another 4xx), and any line "
             "without a result; the files are then rewritten with every custom_id in them exactly once, "
             "a retry that succeeds moving to OUTPUT (e.g. the same command + --retry-failed)")
    rec.add_argument(
        "--http-attempts", type=_positive_int, default=5, metavar="N",
        help="tries for each HTTP request (the GET of a URL input, the PUT of a URL output) before "
             "giving up, on 5xx, 429, 408 or a broken connection (default 5; e.g. --http-attempts 8)")
    rec.add_argument(
        "--retry-backoff", type=_seconds, default=1.0, metavar="SECONDS",
        help="wait before the first retry; doubles each retry, with jitter, up to 30 s "
             "(default 1.0; e.g. --retry-backoff 0.5)")
    rec.add_argument(
        "--input-header", type=_header, action="append", default=[], metavar="'NAME: VALUE'",
        help="an HTTP header for the GET of a URL input; repeatable "
             "(e.g. --input-header 'Authorization: Bearer abc')")
    rec.add_argument(
        "--output-header", type=_header, action="append", default=[], metavar="'NAME: VALUE'",
        help="an HTTP header for the PUT of a URL output; repeatable "
             "(e.g. --output-header 'Content-Type: application/jsonl')")

    out = p.add_argument_group("progress")
    out.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="--progress draws a progress bar on stderr even when it is not a terminal; --no-progress "
             "shows none. Default: a bar on a terminal, else a progress log line every "
             "--progress-interval seconds (e.g. --no-progress)")
    out.add_argument(
        "--progress-interval", type=_interval, default=5.0, metavar="SECONDS",
        help="seconds between progress log lines when stderr is not a terminal "
             "(default 5; e.g. --progress-interval 30)")
    out.add_argument(
        "-q", "--quiet", action="store_true",
        help="print nothing but errors: no progress, no summary; the exit status still tells "
             "(e.g. -q)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from services.cli.run_batch.runner import RunBatchOptions, run
    from services.settings import get_settings

    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING,
                        format="offhours run-batch: %(message)s", stream=sys.stderr)
    settings = get_settings()
    options = RunBatchOptions(
        input=args.input_file,
        output=args.output_file,
        model=args.model,
        error_file=args.error_file,
        output_tmp_dir=args.output_tmp_dir,
        endpoint=args.endpoint,
        max_concurrency=args.max_concurrency,
        resume=args.resume,
        retry_failed=args.retry_failed,
        models_file=args.models_file or settings.models_file,
        progress=args.progress,
        progress_interval=args.progress_interval,
        quiet=args.quiet,
        max_line_bytes=args.max_line_bytes or settings.max_line_bytes,
        http_attempts=args.http_attempts,
        retry_backoff=args.retry_backoff,
        input_headers=dict(args.input_header),
        output_headers=dict(args.output_header),
    )
    return run(options)
