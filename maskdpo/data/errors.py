"""Errors for bad records: each names the file, the line and the field at fault."""

from __future__ import annotations


class RecordError(ValueError):
    """A record that cannot be used. `field` is a dotted path such as `chosen.sentences[2].label`.

    `skippable` errors (a valid record that cannot train) are skipped and recorded even in strict mode.
    """

    skippable = False

    def __init__(self, message: str, field: str | None = None, path: str | None = None, line: int | None = None):
        self.message, self.field, self.path, self.line = message, field, path, line
        super().__init__(self.__str__())

    def located(self, path: str, line: int) -> RecordError:
        """The same error, placed at `path`:`line`."""
        return type(self)(self.message, self.field, path, line)

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}: " if self.path is not None else ""
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"
