"""An OpenAPI 3.1 document built from the route table and the pydantic models in `schemas/`.

Handlers declare what they take and return with `@operation(...)`; `/openapi.json` walks the
app's routes and turns each declaration into a path item. Nothing is written twice: the query,
form and response schemas are the same models the handlers validate with and the SDK parses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.errors import ErrorBody
from services.http.auth import requires_key

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
BINARY = "binary"  # a response of raw bytes (file content)

H = TypeVar("H", bound=Callable[..., Any])
_ATTR = "__openapi_operation__"
_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: Mapping[int, type[BaseModel] | Literal["binary"]]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_media_type: str = "application/json"
    tags: tuple[str, ...] = ()
    description: str | None = None
    path_params: Mapping[str, str] = field(default_factory=dict)  # name -> description


def operation(
    summary: str,
    *,
    responses: Mapping[int, type[BaseModel] | Literal["binary"]],
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    body_media_type: str = "application/json",
    tags: tuple[str, ...] = (),
    description: str | None = None,
    path_params: Mapping[str, str] | None = None,
) -> Callable[[H], H]:
    """Declare a handler's request and response models for the OpenAPI document."""
    op = Operation(summary, responses, query, body, body_media_type, tags, description, path_params or {})

    def mark(handler: H) -> H:
        setattr(handler, _ATTR, op)
        return handler

    return mark


def operation_of(handler: Any) -> Operation | None:
    return getattr(handler, _ATTR, None)


@dataclass
class OpenAPIInfo:
    title: str
    version: str
    description: str = ""
    cache: dict[str, Any] = field(default_factory=dict)


OPENAPI_KEY = web.AppKey("openapi", OpenAPIInfo)


def _query_parameters(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF_TEMPLATE, by_alias=True)
    defs.update(schema.pop("$defs", {}))
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema.get("properties", {}).items():
        description = prop.pop("description", None)
        prop.pop("title", None)
        # `X | None = None` is just an optional parameter in a query string: drop the null branch.
        branches = prop.get("anyOf")
        if branches and len(branches) == 2 and {"type": "null"} in branches:
            other = next(b for b in branches if b != {"type": "null"})
            prop = {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")}, **other}
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def build_openapi(app: web.Application, info: OpenAPIInfo) -> dict[str, Any]:
    """The document for every route of `app` that declares an operation."""
    routes = []
    for route in app.router.routes():
        op = operation_of(route.handler)
        if op is None or route.method == "HEAD" or route.resource is None:
            continue
        routes.append((route.resource.canonical, route.method.lower(), route.handler, op))

    # Collect every body/response model once, so shared models become one component each.
    wanted: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [(ErrorBody, "serialization")]
    for _, _, _, op in routes:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        wanted += [(m, "serialization") for m in op.responses.values() if m != BINARY]
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF_TEMPLATE, by_alias=True)
    components: dict[str, Any] = dict(top.get("$defs", {}))
    error_ref = refs[(ErrorBody, "serialization")]

    paths: dict[str, dict[str, Any]] = {}
    for path, method, handler, op in routes:
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"},
             **({"description": op.path_params[name]} if name in op.path_params else {})}
            for name in _PATH_PARAM.findall(path)
        ]
        if op.query is not None:
            parameters += _query_parameters(op.query, components)
        responses: dict[str, Any] = {}
        for status, model in op.responses.items():
            if model == BINARY:
                content = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
            else:
                content = {"application/json": {"schema": refs[(model, "serialization")]}}
            responses[str(status)] = {"description": _describe(status), "content": content}
        responses["default"] = {
            "description": "An error: OpenAI-shaped body, status 4xx or 5xx.",
            "content": {"application/json": {"schema": error_ref}},
        }
        entry: dict[str, Any] = {
            "operationId": handler.__name__,
            "summary": op.summary,
            "responses": responses,
        }
        if op.description:
            entry["description"] = op.description
        if op.tags:
            entry["tags"] = list(op.tags)
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {op.body_media_type: {"schema": refs[(op.body, "validation")]}},
            }
        if requires_key(path):
            entry["security"] = [{"bearerAuth": []}]
        paths.setdefault(path, {})[method] = entry

    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": info.title, "version": info.version, "description": info.description},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "sk-oh-… API key"}},
        },
    }


def _describe(status: int) -> str:
    return {200: "OK", 201: "Created", 202: "Accepted", 204: "No content"}.get(status, str(status))


async def openapi_handler(request: web.Request) -> web.Response:
    info = request.app[OPENAPI_KEY]
    # Routes are frozen once the app runs, so the document is built once.
    if "doc" not in info.cache:
        info.cache["doc"] = build_openapi(request.app, info)
    return web.json_response(info.cache["doc"])
