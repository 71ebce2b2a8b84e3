"""Model registry: versions with lineage, aliases, promote and rollback, in SQLite."""

from kollm.registry.store import ModelVersion, Registry, RegistryError, default_home

__all__ = ["ModelVersion", "Registry", "RegistryError", "default_home"]
