"""Misuse ends in one clear line and exit 2, and two runs never share a
workdir: flag parsing, the memory check, the workdir lock and the recipe
kept on resume. Each class is a table; the CLI path goes through main.py."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from cnnflax import config_check, lock, memory, models, train
from cnnflax import run as run_lib
from cnnflax.errors import CheckpointError, ConfigError
from tests.conftest import ROOT, tiny_config
from tests.test_cli import TINY, cli, error_line

# --- flag parsing: absl's own errors look like cnnflax's ---------------------

PARSE = [
    (["--config=configs/resnet_cifar.py:abc"],
     "--config=configs/resnet_cifar.py:abc: get_config('abc') failed "
     "(ValueError: invalid literal for int() with base 10: 'abc')"),
    (["--config=configs/nope.py"], "configs/nope.py does not exist"),
    (["--config=configs/default.py", "--config.batch_size=abc"],
     "flag --config.batch_size=abc: invalid literal for int()"),
    (["--config=configs/default.py", "--config.half_precision=maybe"],
     "flag --config.half_precision=maybe"),
    (["--config=configs/default.py", "--nosuchflag"],
     "Unknown command line flag 'nosuchflag'"),
    ([], "--config is required"),
    (["--config=configs/default.py", "extra"], "unexpected arguments: extra"),
    (["--config=configs/default.py", "--config.num_train_steps=-5"],
     "config.num_train_steps=-5 is not valid; it must be >= 1, or -1"),
    (["--config=configs/default.py", "--config.model.num_classes=0"],
     "config.model.num_classes=0 is not valid; it must be >= 1"),
]


def assert_one_clean_line(proc, expected):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert expected in error_line(proc)
  assert "Traceback" not in proc.stderr
  assert "--helpshort or --helpfull" not in proc.stderr  # absl's own hint


@pytest.mark.parametrize("args, expected", PARSE)
def test_main_parse_errors_are_one_line_exit_2(tmp_path, args, expected):
  proc = cli("main.py", f"--workdir={tmp_path}", *args)
  assert_one_clean_line(proc, expected)
  assert not (tmp_path / "checkpoints").exists()


TOOLS = [
    (["-m", "cnnflax.evaluate", "--workdir=/nonexistent", "--protocol=fivecrop"],
     "--protocol='fivecrop' is not valid"),
    (["-m", "cnnflax.summary", "--config=configs/nope.py"],
     "configs/nope.py does not exist"),
    (["-m", "cnnflax.benchmark", "--config=configs/default.py",
      "--config.batch_size=x"], "flag --config.batch_size=x"),
    (["-m", "cnnflax.convert", "--source=torchvision:resnet18"],
     "--weights is required"),
]


@pytest.mark.parametrize("args, expected", TOOLS)
def test_every_tool_parses_flags_the_same_way(args, expected):
  assert_one_clean_line(cli(*args), expected)


# --- memory: a step too big for the machine is refused before it runs -------

GB = 10**9
PLAN = {"temp_bytes": 30 * GB, "argument_bytes": 2 * GB,
        "output_bytes": 2 * GB, "alias_bytes": 2 * GB}


class Device:
  def __init__(self, limit=None, process_index=0):
    self.platform = "gpu" if limit else "cpu"
    self.limit, self.process_index = limit, process_index

  def memory_stats(self):
    return {"bytes_limit": self.limit} if self.limit else None


ROOM = [  # (plan, devices, host bytes free, (need, room) or None)
    (PLAN, [Device(80 * GB)], None, (32 * GB, 80 * GB)),
    (PLAN, [Device(16 * GB)], None, (32 * GB, 16 * GB)),
    ({}, [Device(16 * GB)], None, None),  # no plan: say nothing
    (PLAN, [Device()], None, None),  # no figure for the host either
    (PLAN, [Device()], 24 * GB, (30 * GB, 24 * GB)),
    (PLAN, [Device(), Device()], 64 * GB, (60 * GB, 64 * GB)),
    (PLAN, [Device(), Device(process_index=1)], 64 * GB, (30 * GB, 64 * GB)),
]


@pytest.mark.parametrize("plan, devices, free, expected", ROOM)
def test_need_and_room(monkeypatch, plan, devices, free, expected):
  monkeypatch.setattr(memory, "host_available_bytes", lambda: free)
  got = memory.need_and_room(plan, devices)
  assert (got and got[:2]) == expected


REMEDIES = [  # which fields the message offers
    ({}, "lenet5_modern", ["batch_size (now 16)", "half_precision=True"],
     ["memory_efficient", "scan_blocks"]),
    ({"half_precision": True}, "lenet5_modern", ["batch_size"],
     ["half_precision"]),
    ({"model.name": "densenet_bc_cifar", "dataset.synthetic_channels": 3},
     "densenet_bc_cifar", ["model.memory_efficient=True"], ["scan_blocks"]),
    ({"model.name": "resnet20_cifar", "dataset.synthetic_channels": 3},
     "resnet20_cifar", ["model.scan_blocks=True"], ["memory_efficient"]),
]


@pytest.mark.parametrize("overrides, name, said, unsaid", REMEDIES)
def test_memory_refusal_names_the_fields_that_help(overrides, name, said,
                                                   unsaid):
  config = tiny_config(**overrides)
  fields = models.module_fields(models.model_info(name).module)
  text = memory._remedies(config, fields)  # pylint: disable=protected-access
  assert all(s in text for s in said), text
  assert not any(u in text for u in unsaid), text


def test_a_compiled_step_is_checked_against_the_memory_there_is(monkeypatch):
  config = tiny_config()
  run = run_lib.Run(config, "")
  state = run.devices.replicate(run.init_state())
  arrays = run.devices.replicate(
      train.data.device_arrays(run.dataset, config.dataset, True))
  batch = run.devices.shard(run.train_batch(0))
  compiled = run.train_fn().lower(state, arrays, batch).compile()
  assert memory.compiled_memory(compiled)["temp_bytes"] > 0
  fields = models.module_fields(type(run.model))
  memory.check_step(compiled, run.devices.devices, config, fields)  # fits
  monkeypatch.setattr(memory, "host_available_bytes", lambda: 1000)
  with pytest.raises(ConfigError) as info:
    memory.check_step(compiled, run.devices.devices, config, fields)
  message = str(info.value)
  assert message.startswith("the train step needs"), message
  assert "GB in host memory by XLA's plan" in message
  assert "lower config.batch_size (now 16)" in message


def test_main_refuses_a_step_bigger_than_the_host(tmp_path):
  """ResNet-20 at batch 65,536 plans about 129 GB of temporaries."""
  proc = cli("main.py", "--config=configs/default.py", f"--workdir={tmp_path}",
             "--config.model.name=resnet20_cifar",
             "--config.dataset.name=synthetic",
             "--config.dataset.synthetic_train_size=65536",
             "--config.dataset.synthetic_test_size=8",
             "--config.batch_size=65536", "--config.eval_batch_size=8",
             "--config.num_train_steps=2")
  line = error_line(proc)
  assert proc.returncode == 2
  assert "the train step needs" in line and "GB in host memory" in line
  assert "lower config.batch_size (now 65536)" in line
  assert not os.listdir(tmp_path / "checkpoints")


# --- the workdir lock ---------------------------------------------------------

HOST = socket.gethostname()


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def record(**fields):
  now = time.time()
  return {"host": HOST, "pid": os.getpid(), "token": "theirs",
          "started": now - 60, "heartbeat": now, "slurm_job": "",
          "slurm_restart": 0, **fields}


# (their record, our SLURM environment, why stale or None). A heartbeat is
# given by its age (`age`, s): the table is built long before a test runs.
STALE = [
    (dict(), {}, None),
    (dict(pid="DEAD"), {}, "its process"),
    (dict(host="elsewhere", pid=1, age=10), {}, None),
    (dict(host="elsewhere", pid=1, age=3600), {}, "its last heartbeat was"),
    (dict(host="elsewhere", pid=1, slurm_job="77"),
     {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"},
     "an earlier run of this SLURM job 77"),
    (dict(host="elsewhere", pid=1, slurm_job="77", slurm_restart=1),
     {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"}, None),
    (dict(host="elsewhere", pid=1, slurm_job="76"),
     {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"}, None),
]


@pytest.mark.parametrize("theirs, env, why", STALE)
def test_stale_locks(monkeypatch, theirs, env, why):
  for key in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT"):
    monkeypatch.delenv(key, raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  theirs = dict(theirs)
  if theirs.get("pid") == "DEAD":
    theirs["pid"] = dead_pid()
  theirs["heartbeat"] = time.time() - theirs.pop("age", 0)
  reason = lock.stale_reason(record(**theirs))
  assert (reason is None) if why is None else (why in reason)


def write_lock(workdir, **fields):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, lock.NAME), "w") as f:
    f.write(json.dumps(record(**fields)) if fields.get("text") is None
            else fields["text"])


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_or_broken_one(
    tmp_path):
  write_lock(tmp_path, host="elsewhere", pid=4242)
  with pytest.raises(lock.WorkdirLocked) as info:
    lock.WorkdirLock(str(tmp_path), settle_s=0.05).acquire()
  assert "in use by another run (host elsewhere pid 4242" in str(info.value)
  for broken in ({"pid": dead_pid()}, {"text": "{not json"}):
    write_lock(tmp_path, **broken)
    held = lock.WorkdirLock(str(tmp_path), settle_s=0.05)
    with held:
      assert json.loads((tmp_path / lock.NAME).read_text())["token"] == \
          held.token
    assert not (tmp_path / lock.NAME).exists()  # given back


def test_a_run_whose_lock_was_taken_stops_before_writing(tmp_path):
  held = lock.WorkdirLock(str(tmp_path), settle_s=0.05)
  held.acquire()
  held.check()
  write_lock(tmp_path, host="elsewhere", pid=7)
  with pytest.raises(lock.WorkdirLocked, match="taken over by host elsewhere "
                     "pid 7"):
    held.check()
  held.release()
  assert json.loads((tmp_path / lock.NAME).read_text())["pid"] == 7


RACE = """
import sys, time
from cnnflax import lock
while time.time() < float(sys.argv[2]):
  time.sleep(0.001)
try:
  with lock.WorkdirLock(sys.argv[1]):
    print("HELD", flush=True)
    time.sleep(float(sys.argv[3]))
except lock.WorkdirLocked as e:
  print("LOCKED", e, flush=True)
"""


def race(workdir: str, runs: int = 3, hold_s: float = 3.0) -> list[str]:
  """`runs` processes that try to take the lock at the same instant."""
  start = time.time() + 4  # after every interpreter has started
  procs = [subprocess.Popen([sys.executable, "-c", RACE, workdir, str(start),
                             str(hold_s)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for _ in range(runs)]
  return [p.communicate(timeout=120)[0].strip() for p in procs]


def test_racing_runs_on_a_disk_one_wins(tmp_path):
  outcomes = race(str(tmp_path))
  assert sorted(o.split()[0] for o in outcomes) == ["HELD", "LOCKED",
                                                     "LOCKED"], outcomes


def test_main_refuses_a_held_workdir_and_takes_over_a_dead_run(tmp_path):
  write_lock(tmp_path, host="elsewhere", pid=4242)
  args = ("main.py", "--config=configs/default.py", f"--workdir={tmp_path}",
          *TINY)
  proc = cli(*args)
  assert_one_clean_line(proc, "is in use by another run (host elsewhere pid "
                        "4242")
  assert not (tmp_path / "checkpoints").exists()
  write_lock(tmp_path, pid=dead_pid())
  proc = cli(*args)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "taking over the lock" in proc.stderr and "is gone" in proc.stderr
  assert not (tmp_path / lock.NAME).exists()


# --- resume keeps the recipe --------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.train_and_evaluate(tiny_config(), workdir)  # 6 steps, saved at 3, 6
  return workdir


REFUSED = [
    ({"batch_size": 8}, "config.batch_size=16 but this run has "
     "config.batch_size=8"),
    ({"seed": 3}, "config.seed=0 but this run has config.seed=3"),
    ({"optimizer.learning_rate": 0.1, "optimizer.momentum": 0.5},
     "config.optimizer.learning_rate=0.01, config.optimizer.momentum=0.9 but"),
    ({"schedule.name": "constant"}, "config.schedule.name='cosine'"),
    ({"dataset.flip": False}, "config.dataset.flip=True"),
    ({"half_precision": True}, "config.half_precision=False"),
    ({"label_smoothing": 0.1}, "config.label_smoothing=0.0"),
    ({"optimizer.weight_decay": 0.0}, "config.optimizer.weight_decay=0.0005"),
    ({"batch_norm_sync": False}, "config.batch_norm_sync=True"),
]


@pytest.mark.parametrize("overrides, message", REFUSED)
def test_resume_with_another_recipe_is_refused(trained, tmp_path, overrides,
                                               message):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(CheckpointError) as info:
    train.train_and_evaluate(tiny_config(num_train_steps=9, **overrides),
                             workdir)
  text = str(info.value)
  assert message in text and "\n" not in text, text
  assert "restore those values or use a new --workdir" in text
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  with open(os.path.join(workdir, "config.json")) as f:  # not overwritten
    assert json.load(f)["num_train_steps"] == 6


ALLOWED = [
    {"num_train_steps": 9},  # extend a finished run
    {"num_train_steps": 9, "log_every_steps": 3, "eval_every_steps": 0,
     "checkpoint_every_steps": 9, "checkpoints_to_keep": 1,
     "checkpoint_async": False, "eval_batch_size": 8, "dataset.prefetch": 0,
     "parallelism": "pmap", "backend.conv": "xla"},
]


@pytest.mark.parametrize("overrides", ALLOWED)
def test_resume_may_change_length_cadence_and_backend(trained, tmp_path,
                                                      overrides):
  workdir = str(tmp_path / "w")
  shutil.copytree(trained, workdir)
  results = train.train_and_evaluate(tiny_config(**overrides), workdir)
  assert results["steps"] == 9


def test_every_field_is_recipe_or_free_to_change():
  keys = set(config_check.flat_keys(tiny_config()))
  assert set(config_check.RESUME_FREE) <= keys
  assert set(config_check.recipe(tiny_config())) == keys - set(
      config_check.RESUME_FREE)


def test_main_refuses_a_resume_with_another_batch_size(tmp_path):
  args = ("main.py", "--config=configs/default.py", f"--workdir={tmp_path}",
          *TINY)
  assert cli(*args).returncode == 0
  proc = cli(*args, "--config.batch_size=8", "--config.num_train_steps=6")
  assert_one_clean_line(proc, "config.batch_size=16 but this run has "
                        "config.batch_size=8")
