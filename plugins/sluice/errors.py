"""Exceptions that carry a message a user can act on."""


class SourceError(Exception):
    """A source could not be read completely; the message names the source and what was wrong."""


class MappingError(ValueError):
    """A mapping param is malformed or does not fit the source's fields."""


class LockTimeout(Exception):
    """Another run holds the write lock of a source for longer than SLUICE_LOCK_TIMEOUT."""


class InvalidSource(ValueError):
    """A source's description is malformed: the message names the source and the field."""


class StagedFileMissing(Exception):
    """A staged file is not where its ingest left it (local staging on another machine, an object deleted or
    unreadable): the message names the file, the worker that wrote it and the one reading."""
