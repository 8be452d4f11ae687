"""The one exception that ends a run early with a message for the user."""

from __future__ import annotations


class RunBatchError(Exception):
    """A usage or I/O problem (unreadable input, failed upload, bad flag): exit status 2.

    The message is printed as it is, so it must say what went wrong, where, and what to do.
    """
