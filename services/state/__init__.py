"""The persistence every service shares: one store class per MongoDB collection or S3 key space.

Callers reach state through a store's methods only; no module outside this package touches a
collection. Each store is cheap to build over a shared database handle or object store.
"""
