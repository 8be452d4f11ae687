"""Pydantic v2 models of every wire format — the one place a field is defined."""
