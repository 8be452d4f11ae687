"""The web console: a browser client of the public `/v1` API, served by `offhours api` at `/`.

Static files (HTML, CSS, plain JavaScript) shipped in the package, no build step; the one route of
its own is `/console/events`, a Server-Sent Events stream of the signed-in project's batch events
(docs/console.md).
"""
