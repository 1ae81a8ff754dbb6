"""User-facing errors: each carries one line that names the field and the fix."""


class CnnflaxError(Exception):
  """Base class; main.py prints these as one line and exits non-zero."""


class ConfigError(CnnflaxError, ValueError):
  """A config field has a bad value or combination."""


class DataError(CnnflaxError):
  """A dataset is missing, unreadable or unknown."""


class CheckpointError(CnnflaxError):
  """A checkpoint cannot be restored or does not belong to this run."""


class NumericalError(CnnflaxError):
  """The loss or a gradient became NaN or infinite."""


class Stopped(Exception):
  """A run saved its state and stopped on a signal (preemption, Ctrl-C)."""

  def __init__(self, signal_name: str, exit_code: int, step: int):
    super().__init__(f"stopped by {signal_name} at step {step} after saving "
                     "a checkpoint; rerun the same command to resume")
    self.exit_code = exit_code
    self.step = step
