"""Helpers and harnesses of the test suite, imported one way: `from tests.support.<module> import ...`.

- wait.py       `wait_for(condition, timeout)`: poll until true, fail after a deadline (never sleep-and-hope)
- settings.py   test Settings: private database/bucket/topic prefix per test or module, short timers
- lines.py      request lines and JSONL files of them
- models.py     the real CPU models' names; registry files with test-sized chunks and `gated-model`
- servers.py    `serving()`: an aiohttp app on a loopback port, with its stores
- api.py        `Api`: a handle on the public API app (keys, SDK client, plain HTTP, stores)
- files.py      `FilesApi`: a handle on the Files API app (hand-built uploads, leftovers)
- http_app.py   the app of the HTTP convention tests and `Served`, its handle
- stack.py      `Stack`: dispatcher + workers in this process, without HTTP
- processes.py  `ServiceStack`: api, dispatcher and workers as real processes; SDK-side helpers
- upstream.py   `GatedUpstream`: a chat server that answers only when the test allows
- notifier.py   webhook receivers, batches driven through their statuses, the events example
- run_batch.py  `offhours run-batch` helpers: input files, the real command, result checks

Fixtures live in the conftest.py files and only there; they build on these modules.
"""
