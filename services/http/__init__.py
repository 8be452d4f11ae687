"""HTTP conventions shared by every offhours service: errors, auth, request ids, logs, metrics,
health, paging, parameter parsing and the OpenAPI document (docs/api.md, "Conventions")."""
