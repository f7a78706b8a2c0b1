"""Exceptions that carry a message a user can act on."""


class SluiceError(Exception):
    """A failure of the pipeline whose message says what to do; the base of the ones below that are not
    ValueErrors."""


class SourceError(SluiceError):
    """A source could not be read completely; the message names the source and what was wrong."""


class ConfigError(SluiceError):
    """What only a person can fix: the catalog, a connection, an option, a source's answer that will not change
    (401, 403, 404), a decision to take (a large delete). No retry can heal it, so the task fails at once
    instead of waiting out its retries. The message names the cause, then what it stops, then how to fix it."""


class MissingConnection(ConfigError):
    """An Airflow connection a source or the warehouse needs is not defined."""

    @classmethod
    def of(cls, conn_id: str, consequence: str, example_uri: str, meaning: str = "") -> "MissingConnection":
        """The error for conn_id, with both ways to define it (a constructor of its own keeps the exception's args
        its message, as pickling and copying expect)."""
        meaning = f" ({meaning})" if meaning else ""
        return cls(f"connection {conn_id} is not defined: {consequence}. Define it with `airflow connections add "
                   f"{conn_id} --conn-uri {example_uri}`{meaning} or the environment variable "
                   f"AIRFLOW_CONN_{conn_id.upper()}={example_uri}")


class SourceRefused(SourceError, ConfigError):
    """The source answered with a status that a retry will not change (4xx other than 408 and 429): a wrong
    endpoint, missing or wrong credentials."""


class HeaderMismatch(SourceError, ConfigError):
    """A CSV's header lacks a column the source's mapping names: no row of it can load until the mapping (or the
    delimiter, or the file) is fixed."""


class InvalidSetting(ConfigError, ValueError):
    """A SLUICE_* environment variable holds a value the setting cannot take: the message names both."""


class MappingError(ValueError):
    """A mapping param is malformed or does not fit the source's fields."""


class LockTimeout(SluiceError):
    """Another run holds the write lock of a source for longer than SLUICE_LOCK_TIMEOUT."""


class InvalidSource(ConfigError, ValueError):
    """A source's description is malformed: the message names the source and the field."""


class DeleteRefused(ConfigError):
    """A read would soft-delete more of a source's live rows than its max_delete_fraction allows: raised inside
    the source's upsert transaction, so nothing of that source's upsert commits (but the quality gate's record of
    it: measured, a sluice.delete_guard.Measured). A person decides: a run triggered with accept_deletes for the
    source takes the drop."""

    def __init__(self, message: str, measured=None):
        super().__init__(message)
        self.measured = measured


class QualityHeld(ConfigError):
    """The quality gate held a source's batch back (an error check or an error anomaly failed): nothing of it
    reached normalized_data and its checkpoint stays. A person looks at it, then releases it (sluice-release) or
    lets the next run's fetch supersede it."""


class ReleaseRefused(ConfigError):
    """A release names a batch that is not held (published, already released, superseded, refused by the delete
    guard, or unknown)."""


class StagedFileMissing(SluiceError):
    """A staged file is not where its ingest left it (local staging on another machine, an object deleted or
    unreadable): the message names the file, the worker that wrote it and the one reading."""


class TaskFailed(SluiceError):
    """A task's exception re-raised with its text masked (its class name first, the original's traceback): the
    task log renders an exception's text unmasked, and a library's text may quote a credential."""


class ViewInUse(ConfigError):
    """A source's typed view must be replaced (its declared fields changed) but other objects depend on it: the
    message names them and how to proceed. Retrying does not help until a person acts."""
