"""`GET /v1/models` and `GET /v1/models/{model}`: the models that have a live worker right now.

A model appears while one of its workers heartbeated within `worker_liveness_seconds`; the
extension fields `endpoints` and `workers` say what it serves and how many workers it has.
"""

from __future__ import annotations

from aiohttp import web

from schemas.openai_objects import Model, ModelList, dump
from services.http.errors import not_found
from services.http.openapi import operation
from services.http.service import DB_KEY, SETTINGS_KEY
from services.state.workers import LiveModel, live_models

TAGS = ("models",)


def _model(name: str, live: LiveModel) -> Model:
    return Model(id=name, endpoints=live["endpoints"], workers=live["workers"])


async def _live(request: web.Request) -> dict[str, LiveModel]:
    return await live_models(request.app[DB_KEY], request.app[SETTINGS_KEY].worker_liveness_seconds)


@operation("List the models that can run batches now", responses={200: ModelList}, tags=TAGS)
async def list_models(request: web.Request) -> web.Response:
    models = await _live(request)
    return web.json_response(dump(ModelList(data=[_model(name, live) for name, live in models.items()])))


@operation("Retrieve a model", responses={200: Model}, tags=TAGS,
           path_params={"model": "The model's name, as request lines give it in `body.model`."})
async def retrieve_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    live = (await _live(request)).get(name)
    if live is None:
        raise not_found(f"The model '{name}' does not exist or has no running worker.",
                        param="model", code="model_not_found")
    return web.json_response(dump(_model(name, live)))


def add_model_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models, allow_head=False)
    # `{model:.+}`: model names may contain "/" (e.g. "org/model"), as OpenAI's route allows.
    app.router.add_get("/v1/models/{model:.+}", retrieve_model, allow_head=False)
