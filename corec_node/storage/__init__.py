"""Storage: SQLite on every node, optional PostgreSQL sync through an outbox.

Public API (everything else in this package is private):

- :class:`LocalStore`: the node's SQLite database (block state and history, members, alerts,
  audit, election vote, fenced nucleus records, the outbox).
- :class:`Syncer`: the task that drains the outbox into PostgreSQL, backing off when it is down.
- :class:`PostgresSync`: the PostgreSQL side (migrations, partitions, COPY + upsert, fencing).
- :class:`PluginStore`: a plugin's own SQLite file and PostgreSQL schema.
- Errors: :class:`StaleTermError`, :class:`SchemaTooNewError` (both :class:`StorageError`).
"""

from corec_node.storage.errors import SchemaTooNewError, StaleTermError, StorageError
from corec_node.storage.local import OutboxItem, LocalStore
from corec_node.storage.plugin_store import PluginPostgres, PluginStore
from corec_node.storage.postgres import ApplyResult, PostgresSync
from corec_node.storage.rows import BLOCK_COLUMNS
from corec_node.storage.sync import Syncer

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
