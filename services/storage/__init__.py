"""Object storage port: one small interface, one module per backend, chosen by URI scheme (see ``base``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.storage.base import (InvalidKey, ObjectInfo, ObjectNotFound, ObjectStore, check_key, open_store,
                                   register_store)

if TYPE_CHECKING:
    from services.settings import Settings

__all__ = ["InvalidKey", "ObjectInfo", "ObjectNotFound", "ObjectStore", "check_key", "data_store", "open_store",
           "register_store", "repository_store"]


def data_store(settings: "Settings") -> ObjectStore:
    """The data bucket: datasets, runs, lineage, drift references."""
    return open_store(settings.data_uri, s3_endpoint_url=settings.s3_endpoint_url)


def repository_store(settings: "Settings") -> ObjectStore:
    """The Triton model repository."""
    return open_store(settings.model_repository_uri, s3_endpoint_url=settings.s3_endpoint_url)
