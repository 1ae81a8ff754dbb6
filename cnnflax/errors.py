"""User-facing errors: each carries one line that names the field and the fix."""


class CnnflaxError(Exception):
  """Base class; main.py prints these as one line and exits non-zero."""


class ConfigError(CnnflaxError, ValueError):
  """A config field has a bad value or combination."""


class DataError(CnnflaxError):
  """A dataset is missing, unreadable or unknown."""


class CheckpointError(CnnflaxError):
  """A checkpoint cannot be restored or does not belong to this run."""
