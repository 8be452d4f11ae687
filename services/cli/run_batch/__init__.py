"""`offhours run-batch`: run a JSONL batch file through one model, with no services.

The command module (services/cli/run_batch_command.py) turns flags into `RunBatchOptions`;
`runner.run` (or `runner.run_batch` on a running loop) does the work. The parts:

- `sources` — a local file or stdin, read in blocks; `http_source` — a URL, one streaming GET
- `sinks` — the buffered local output files; `upload` — the PUT of a finished file to a URL
- `http_retry` — which HTTP failures are retried, and the backoff
- `locations` — path or URL, the staging file of a URL output, URLs fit to print
- `resume` — what an earlier run already wrote (`--resume`)
- `retry` — which lines `--retry-failed` runs again, and the rewrite of the result files
- `validation` — the shared line validator, with `--model` as the default `body.model`
- `progress` — the bar or the periodic log lines; `summary` — the closing report
"""
