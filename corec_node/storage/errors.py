"""What storage raises, and whose fault each error is."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for storage errors a caller may want to catch as one."""


class StaleTermError(StorageError):
    """A fenced write carried a term older than the highest one this database has seen.

    The caller (a nucleus that has been deposed, or a late write from one) is at fault: the
    write was refused and nothing was changed. Do not retry with the same term.
    """

    def __init__(self, term: int, highest: int, database: str, detail: str = "") -> None:
        self.term = term
        self.highest = highest
        self.database = database
        msg = f"{database}: term {term} refused, the highest term seen is {highest}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class SchemaTooNewError(StorageError):
    """The database was migrated by a newer corec-node than this one: refuse to touch it."""

    def __init__(self, database: str, found: int, known: int) -> None:
        self.database = database
        self.found = found
        self.known = known
        super().__init__(
            f"{database} has schema version {found}, newer than version {known}, the newest this "
            f"corec-node knows; upgrade corec-node or point it at another database"
        )
