"""Command-line entry points: every misuse ends in one line and exit 2.

absl reports a flag it cannot parse with a traceback or a "FATAL Flags
parsing error" and exit 1, and ml_collections raises a config file's load
errors only when the config is first read. `run` parses the flags itself,
reads every config flag at once, and turns those errors, a stray argument
and cnnflax's own errors into `error: ...` on stderr, exit 2.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Callable, NoReturn

from absl import app, flags, logging

from cnnflax.errors import CnnflaxError

EXIT_MISUSE = 2


def fail(message: str) -> NoReturn:
  """Prints `error: message` as one line and exits 2."""
  line = " ".join(str(message).split())
  if flags.FLAGS.is_parsed():  # before, absl would only warn about itself
    logging.error("%s", line)
  print(f"error: {line}", file=sys.stderr)
  sys.exit(EXIT_MISUSE)


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main) with the parsing and error handling above."""
  app.run(_guarded(main), flags_parser=parse_flags)


def _guarded(main):
  def wrapped(argv):
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}; flags take the form "
           f"--name=value (see --helpshort)")
    try:
      return main(argv)
    except CnnflaxError as e:
      fail(str(e))
  return wrapped


def parse_flags(argv: list[str]) -> list[str]:
  try:
    rest = flags.FLAGS(argv)
    for name in _config_flags():
      value = getattr(flags.FLAGS, name)
      if value is not None:
        value.get("")  # a file that failed to load raises its error here
  except Exception as e:  # pylint: disable=broad-except
    fail(flag_error(e, argv))
  return rest


def _config_flags() -> list[str]:
  """--config and the like; not their --config.field overrides."""
  every = flags.FLAGS._flags()  # pylint: disable=protected-access
  return [name for name, flag in every.items()
          if type(flag).__name__ == "_ConfigFlag"]


def flag_error(error: Exception, argv: list[str]) -> str:
  """One line for an error raised while the flags were parsed."""
  cause = _root(error)
  text = _first_line(cause)
  if isinstance(error, flags.UnrecognizedFlagError):
    return f"{_first_line(error)}; see --helpshort for the flags"
  if isinstance(error, flags.Error):
    line = _first_line(error)
    required = re.match(r"flag --(\w+)=None: Flag --\w+ must have a value "
                        r"other than None", line)
    if required:
      return f"--{required[1]} is required; see --helpshort for the flags"
    if line.startswith("flag --") and "." in line.split("=", 1)[0]:
      # "flag --config.batch_size=abc: invalid literal for int() ..."
      return (f"{line}; give a value of the type the config file sets "
              "for that field")
  spec = _config_argument(argv)
  path = spec.split(":", 1)[0] if spec else "the config file"
  if spec and not os.path.exists(path):
    return (f"--config={spec}: {path} does not exist; give a config file, "
            f"e.g. --config=configs/default.py")
  if spec and ":" in spec:
    return (f"--config={spec}: get_config({spec.split(':', 1)[1]!r}) "
            f"failed ({type(cause).__name__}: {text}); give the argument "
            f"after ':' that {path}'s docstring describes")
  return (f"--config={spec or '?'}: loading {path} failed "
          f"({type(cause).__name__}: {text}); fix the file or pick another")


def _config_argument(argv: list[str]) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def _root(error: BaseException) -> BaseException:
  seen = set()
  while True:
    nxt = error.__cause__ or error.__context__
    if nxt is None or id(nxt) in seen:
      return error
    seen.add(id(error))
    error = nxt


def _first_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__
