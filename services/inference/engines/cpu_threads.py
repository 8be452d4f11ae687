"""How many threads an in-process CPU engine uses when its models.toml entry does not say.

Half the CPUs, as llama-cpp-python itself defaults to. Both llama.cpp and torch's OpenMP
threads spin while they wait for each other, so a thread that another process preempts
stalls the rest: on a 2-CPU host shared with other work, llama.cpp with 2 threads ran 10x
slower (and burned 10x the CPU) than with 1, and MiniLM with 2 torch threads 5-7x slower
(docs/engines.md). A dedicated host can set `n_threads` to every core.
"""

from __future__ import annotations

import os


def default_threads() -> int:
    return max(1, (os.cpu_count() or 2) // 2)
