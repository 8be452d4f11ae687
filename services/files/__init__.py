"""The Files API: `/v1/files` upload (streamed to S3), list, retrieve, delete, content (docs/api.md)."""
