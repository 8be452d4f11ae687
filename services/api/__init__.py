"""The `api` process: every public HTTP API on one port (`offhours api`)."""
