from services.storage.base import ObjectInfo, ObjectNotFound, ObjectStore, open_store, register_store

__all__ = ["ObjectInfo", "ObjectNotFound", "ObjectStore", "open_store", "register_store"]
