"""PyMongo's async API against the real local MongoDB (SecantusDB)."""

from __future__ import annotations

import pytest
from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from services.settings import Settings
from services.stores.mongo import close_database, ensure_indexes, open_database


async def test_insert_find_update_and_unique_index(settings: Settings) -> None:
    db = open_database(settings)
    try:
        assert db.name == settings.mongodb_database
        await ensure_indexes(db, {"items": [IndexModel([("key", ASCENDING)], unique=True)]})
        await ensure_indexes(db, {"items": [IndexModel([("key", ASCENDING)], unique=True)]})  # idempotent
        await db.items.insert_many([{"key": f"k{i}", "n": i} for i in range(5)])
        found = await db.items.find({"n": {"$gte": 3}}, {"_id": 0}).sort("n", ASCENDING).to_list()
        assert found == [{"key": "k3", "n": 3}, {"key": "k4", "n": 4}]
        # Compare-and-set, the pattern services use for forward-only status moves.
        res = await db.items.update_one({"key": "k1", "n": 1}, {"$set": {"n": 10}})
        assert res.modified_count == 1
        res = await db.items.update_one({"key": "k1", "n": 1}, {"$set": {"n": 11}})
        assert res.modified_count == 0
        with pytest.raises(DuplicateKeyError):
            await db.items.insert_one({"key": "k0"})
        assert await db.items.count_documents({}) == 5
    finally:
        await close_database(db)
