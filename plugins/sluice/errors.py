"""Exceptions that carry a message a user can act on."""


class SluiceError(Exception):
    """A failure of the pipeline whose message says what to do; the base of the ones below that are not
    ValueErrors."""


class SourceError(SluiceError):
    """A source could not be read completely; the message names the source and what was wrong."""


class MappingError(ValueError):
    """A mapping param is malformed or does not fit the source's fields."""


class LockTimeout(SluiceError):
    """Another run holds the write lock of a source for longer than SLUICE_LOCK_TIMEOUT."""


class InvalidSource(ValueError):
    """A source's description is malformed: the message names the source and the field."""


class DeleteRefused(SluiceError):
    """A read would soft-delete more of a source's live rows than SLUICE_MAX_DELETE_FRACTION allows: raised
    inside the source's upsert transaction, so nothing of that source's upsert commits."""


class StagedFileMissing(SluiceError):
    """A staged file is not where its ingest left it (local staging on another machine, an object deleted or
    unreadable): the message names the file, the worker that wrote it and the one reading."""


class TaskFailed(SluiceError):
    """A task's exception re-raised with its text masked (its class name first, the original's traceback): the
    task log renders an exception's text unmasked, and a library's text may quote a credential."""


class ViewInUse(SluiceError):
    """A source's typed view must be replaced (its declared fields changed) but other objects depend on it: the
    message names them and how to proceed. Retrying does not help until a person acts."""
