"""One exception family, so the CLI can print bad input as a single line."""


class FacekdError(Exception):
    """Any error caused by the user's input: files, records, fields, configs.

    The message is one line naming the file/record/field, what was found and
    what was expected.
    """


class DataError(FacekdError):
    """A data file is missing, truncated, corrupt or of the wrong layout."""


class ConfigError(FacekdError):
    """A config or command-line value is invalid."""


class StorageError(FacekdError):
    """A file cannot be written: the disk is full, read-only or failing, or the folder cannot be made."""


class CheckpointError(FacekdError):
    """A checkpoint or weights file cannot be loaded into the requested model."""


class DistributedError(FacekdError):
    """A collective was called in a way the process group cannot serve."""
