"""The Batches API: batch state (store.py), the events outbox (outbox.py), `/v1/batches` and `/v1/models`."""
