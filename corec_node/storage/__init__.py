"""Storage: SQLite on every node, optional PostgreSQL sync through an outbox.

Public API (everything else in this package is private):

- :class:`LocalStore`: the node's SQLite database (block state and history, members, alerts,
  audit, election vote, fenced nucleus records, the outbox).
- :class:`Syncer`: the task that drains the outbox into PostgreSQL, backing off when it is down.
- :class:`PostgresSync`: the PostgreSQL side (migrations, partitions, COPY + upsert, fencing).
- :class:`PluginStore`: a plugin's own SQLite file and PostgreSQL schema.
- Errors: :class:`StaleTermError`, :class:`SchemaTooNewError` (both :class:`StorageError`).
"""

from importlib import import_module
from typing import Any

from corec_node.storage.errors import SchemaTooNewError, StaleTermError, StorageError
from corec_node.storage.local import LocalStore, OutboxItem
from corec_node.storage.rows import BLOCK_COLUMNS

# The PostgreSQL side (asyncpg) loads on first use: an edge node on SQLite alone never
# pays for it at start.
_LAZY = {
    "ApplyResult": "postgres",
    "PostgresSync": "postgres",
    "PluginPostgres": "plugin_store",
    "PluginStore": "plugin_store",
    "Syncer": "sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"corec_node.storage.{module}"), name)
    globals()[name] = value
    return value

__all__ = [
    "BLOCK_COLUMNS",
    "ApplyResult",
    "LocalStore",
    "OutboxItem",
    "PluginPostgres",
    "PluginStore",
    "PostgresSync",
    "SchemaTooNewError",
    "StaleTermError",
    "StorageError",
    "Syncer",
]
