"""Per-project scheduling settings and quotas, in MongoDB `projects`, one document per project.

    _id: <project name>   weight, max_priority, max_enqueued, max_running, updated_at

Every field is optional: a project without a document (or without a field) gets the default from
Settings (`project_default_*`, `project_max_running_batches`). The operator writes them with
`offhours projects set`; the services read them through `ProjectStore.get`, cached for
`project_settings_ttl_seconds`, so a change takes effect within that long without a restart.

Quota use is derived, never counted by increments: the requests a project has enqueued on a model
are its unfinished requests in batches that are not terminal (`request_counts.total - completed -
failed`, kept current by the dispatcher's progress updates), plus the planned requests of batches
still validating. A finished line gives its quota back by that arithmetic alone, and a crash can
never leave a counter out of step.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from services.settings import Settings
from services.state.batches import ACTIVE_STATUSES, BatchStore

PROJECTS_COLLECTION = "projects"
# Highest first: the order of admission between priority classes.
PRIORITIES: tuple[str, ...] = ("high", "normal", "low")
DEFAULT_PRIORITY = "normal"
_FIELDS = ("weight", "max_priority", "max_enqueued", "max_running")
_QUOTA_FIELDS = ("status", "request_counts", "dispatch_plan")


def priority_rank(priority: str) -> int:
    """0 for `high`, 1 for `normal`, 2 for `low`; lower is admitted first."""
    return PRIORITIES.index(priority)


def batch_priority(metadata: Mapping[str, Any] | None, max_priority: str) -> str:
    """A batch's effective priority: `metadata.priority` (default normal; an unknown value counts as
    normal), never above the project's highest allowed one."""
    asked = (metadata or {}).get("priority")
    asked = asked.strip().lower() if isinstance(asked, str) else DEFAULT_PRIORITY
    if asked not in PRIORITIES:
        asked = DEFAULT_PRIORITY
    return PRIORITIES[max(priority_rank(asked), priority_rank(max_priority))]


def check_priority(value: str) -> str:
    if value not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ProjectSettings:
    """One project's effective settings (its own, or the defaults)."""

    project: str
    weight: float
    max_priority: str
    max_enqueued: int  # requests per model not yet finished; 0 = no limit
    max_running: int  # batches not yet terminal
    custom: tuple[str, ...] = ()  # the fields the project sets itself (the rest are defaults)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["custom"] = list(self.custom)
        return out


class ProjectStore:
    def __init__(self, db: AsyncDatabase[Any], settings: Settings) -> None:
        self._collection: AsyncCollection[Any] = db[PROJECTS_COLLECTION]
        self._batches = BatchStore(db)  # read only, for quota use
        self._settings = settings
        self._cache: dict[str, tuple[float, ProjectSettings]] = {}

    def defaults(self, project: str) -> ProjectSettings:
        s = self._settings
        return ProjectSettings(project=project, weight=s.project_default_weight,
                               max_priority=check_priority(s.project_default_max_priority),
                               max_enqueued=s.project_default_max_enqueued,
                               max_running=s.project_max_running_batches)

    def _from_doc(self, project: str, doc: Mapping[str, Any] | None) -> ProjectSettings:
        base = self.defaults(project)
        if not doc:
            return base
        own = {k: doc[k] for k in _FIELDS if doc.get(k) is not None}
        return ProjectSettings(
            project=project,
            weight=float(own.get("weight", base.weight)),
            max_priority=str(own.get("max_priority", base.max_priority)),
            max_enqueued=int(own.get("max_enqueued", base.max_enqueued)),
            max_running=int(own.get("max_running", base.max_running)),
            custom=tuple(k for k in _FIELDS if k in own),
        )

    async def get(self, project: str, *, fresh: bool = False) -> ProjectSettings:
        """The project's settings, at most `project_settings_ttl_seconds` old (unless `fresh`)."""
        now = time.monotonic()
        cached = self._cache.get(project)
        if not fresh and cached is not None and cached[0] > now:
            return cached[1]
        value = self._from_doc(project, await self._collection.find_one({"_id": project}))
        if len(self._cache) > 10_000:  # many short-lived projects: forget them all rather than grow
            self._cache.clear()
        self._cache[project] = (now + self._settings.project_settings_ttl_seconds, value)
        return value

    async def set(self, project: str, **fields: Any) -> ProjectSettings:
        """Set some of weight / max_priority / max_enqueued / max_running (None leaves a field as it is)."""
        values = {k: v for k, v in fields.items() if v is not None}
        unknown = set(values) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown project setting(s): {', '.join(sorted(unknown))}")
        if "weight" in values and not float(values["weight"]) > 0:
            raise ValueError("weight must be > 0")
        if "max_priority" in values:
            check_priority(values["max_priority"])
        for k in ("max_enqueued", "max_running"):
            if k in values and int(values[k]) < 0:
                raise ValueError(f"{k} must be >= 0")
        await self._collection.update_one({"_id": project}, {"$set": {**values, "updated_at": time.time()}},
                                          upsert=True)
        self._cache.pop(project, None)
        return await self.get(project, fresh=True)

    async def reset(self, project: str, fields: tuple[str, ...] = _FIELDS) -> ProjectSettings:
        """Back to the defaults for `fields` (all of them unless named)."""
        await self._collection.update_one({"_id": project}, {"$unset": dict.fromkeys(fields, "")})
        self._cache.pop(project, None)
        return await self.get(project, fresh=True)

    async def list(self) -> list[ProjectSettings]:
        """Every project with settings of its own, by name."""
        docs = await self._collection.find({}).sort("_id", 1).to_list(None)
        return [self._from_doc(str(d["_id"]), d) for d in docs]

    # ------------------------------------------------------------------ quotas

    async def enqueued(self, project: str, model: str | None = None) -> int:
        """Requests of the project (on `model`, when given) in batches not terminal yet and not finished."""
        total = 0
        async for doc in self._batches.in_statuses(ACTIVE_STATUSES, _QUOTA_FIELDS, project=project, model=model):
            total += _unfinished(doc)
        return total

    async def enqueued_by_model(self) -> dict[tuple[str, str], int]:
        """(project, model) -> enqueued requests, over every batch not terminal yet (the quota gauges)."""
        out: dict[tuple[str, str], int] = {}
        async for doc in self._batches.in_statuses(ACTIVE_STATUSES, ("project", "model", *_QUOTA_FIELDS)):
            model = doc.get("model") or (doc.get("dispatch_plan") or {}).get("model")
            if not model:
                continue
            key = (str(doc.get("project")), str(model))
            out[key] = out.get(key, 0) + _unfinished(doc)
        return out

    async def quota_problem(self, project: str, model: str | None, new_requests: int = 0) -> str | None:
        """None if the project may enqueue `new_requests` more on `model`; otherwise a sentence naming
        the limit (for a 429 `enqueued_request_limit_exceeded` error)."""
        limits = await self.get(project)
        if limits.max_enqueued <= 0 or model is None:
            return None
        used = await self.enqueued(project, model)
        if used + max(0, new_requests) <= limits.max_enqueued and (new_requests > 0 or used < limits.max_enqueued):
            return None
        adds = f", and this batch adds {new_requests}" if new_requests > 0 else ""
        return (f"project {project!r} has {used} requests enqueued on model {model!r}{adds}; its limit is "
                f"{limits.max_enqueued} (max_enqueued). Wait for running batches to finish, or ask the operator "
                f"to raise it")


def _unfinished(doc: Mapping[str, Any]) -> int:
    counts = doc.get("request_counts") or {}
    total = int(counts.get("total") or 0)
    if doc.get("status") == "validating":
        total = int((doc.get("dispatch_plan") or {}).get("requests") or 0)
        return total
    return max(0, total - int(counts.get("completed") or 0) - int(counts.get("failed") or 0))
