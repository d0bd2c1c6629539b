"""Samplers: each refreshes part of the cached values on its own interval, under its own deadline.

A sampler is named by a `SamplerName`, the one definition the flags, the store and the collectors
use; a cycle that could sample nothing at all raises `CycleFailed`.
"""

from __future__ import annotations

from enum import StrEnum


class SamplerName(StrEnum):
    BASIC = "basic"
    STORAGE = "storage"
    BULK = "bulk"
    BLOCK = "block"
    BLOCK_INFO = "block_info"
    JOB = "job"
    STORAGE_POOL = "storage_pool"
    GUEST = "guest"


class CycleFailed(Exception):
    """A cycle that produced nothing at all (no connection, or the call every value needs failed)."""
