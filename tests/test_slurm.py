"""experiments/sweep.py --mode=slurm: the job array it writes.

What SLURM does with the array (signals, requeues, resuming) is checked on a
real one-node cluster by experiments/slurm_drill.py, run by hand; here, what
can be checked without SLURM: the script's shape, the resources it asks for,
bash's reading of it, and the errors for resources SLURM would refuse.
"""
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "experiments"))
import sweep  # noqa: E402

TINY = {"model.name": "lenet5_modern", "dataset.name": "synthetic",
        "num_train_steps": 4}
RUNS = [sweep.Run("a", "configs/default.py", TINY),
        sweep.Run("b", "configs/default.py", {**TINY, "seed": 1})]
ASKED = sweep.Slurm(partition="gpu", account="lab", time="1-00:00:00",
                    nodes=2, gpus="a100:4", cpus=8, mem="64G", warning_s=300,
                    parallel=1, extra=("--qos=high", "--comment=two words"))


def write(root, slurm=sweep.Slurm(), runs=RUNS):
  path = sweep.write_slurm(runs, str(root), 1.0, slurm=slurm)
  with open(path) as f:
    return path, f.read()


def sbatch_lines(script):
  return [shlex.split(l[len("#SBATCH "):])[0] for l in script.splitlines()
          if l.startswith("#SBATCH ")]


def test_each_run_is_a_job_step_of_its_own_index(tmp_path):
  path, script = write(tmp_path)
  assert subprocess.run(["bash", "-n", path]).returncode == 0
  # srun, so that SLURM's --signal and a preemption's SIGTERM reach main.py.
  assert '\nsrun "${srun_options[@]}" "${run[@]}"\nrc=$?\n' in script
  assert "eval" not in script
  commands = re.findall(r"^     run=\((.*)\) ;;$", script, re.M)
  assert [shlex.split(c) for c in commands] == [
      sweep.command(r, str(tmp_path)) for r in RUNS]
  assert re.findall(r"^  (\d)\) name=(\w+)$", script, re.M) == [
      ("0", "a"), ("1", "b")]


def test_the_array_asks_for_the_resources_given(tmp_path):
  _, script = write(tmp_path / "table1", ASKED)
  options = sbatch_lines(script)
  for option in ["--job-name=table1", "--array=0-1%1", "--nodes=2",
                 "--ntasks-per-node=1", "--partition=gpu", "--account=lab",
                 "--time=1-00:00:00", "--gres=gpu:a100:4",
                 "--cpus-per-task=8", "--mem=64G", "--signal=TERM@300",
                 "--requeue", "--open-mode=append",
                 f"--output={tmp_path}/table1/slurm-%A_%a.out",
                 "--qos=high", "--comment=two words"]:
    assert option in options
  assert "srun_options=(--cpus-per-task=8)" in script
  # Nothing asked: the cluster's defaults, but still signal and requeue.
  plain = sbatch_lines(write(tmp_path / "plain")[1])
  assert not any(o.startswith(("--partition", "--account", "--time",
                               "--gres", "--cpus", "--mem")) for o in plain)
  assert "--signal=TERM@120" in plain and "--requeue" in plain


def test_a_task_requeues_itself_when_the_run_stops_on_sigterm(tmp_path):
  _, script = write(tmp_path)
  body = script[script.index("esac"):]
  # The shell survives SIGTERM (bash runs the trap once srun returns).
  assert body.index("trap 'signalled=1' TERM") < body.index('\nsrun "')
  # 143 (saved and stopped) while SLURM still runs the task: requeue it.
  stop = body.index('if [ "$rc" -eq 143 ]')
  assert body.index('"$state" != "JobState=RUNNING"') < stop
  assert 'scontrol requeue "$task"' in body[stop:]
  assert 'task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in body


def test_a_finished_run_is_left_alone(tmp_path):
  """Runs the script's own bash (no SLURM here: reaching srun would fail)."""
  path, _ = write(tmp_path)
  os.makedirs(tmp_path / "b")
  (tmp_path / "b" / "results.json").write_text("{}")
  env = {**os.environ, "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1"}
  done = subprocess.run(["bash", path], env=env, capture_output=True,
                        text=True)
  assert done.returncode == 0, done.stderr
  assert "task 7_1, run b: results.json exists: nothing to do" in done.stdout
  env["SLURM_ARRAY_TASK_ID"] = "2"
  done = subprocess.run(["bash", path], env=env, capture_output=True,
                        text=True)
  assert done.returncode == 2 and "no run for array index 2" in done.stderr
  # Every run finished: no array at all.
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "results.json").write_text("{}")
  assert sweep.write_slurm(RUNS, str(tmp_path), 1.0) is None


@pytest.mark.parametrize("field, value, says", [
    ("partition", "gpu partition", "--slurm_partition=gpu partition: write"),
    ("account", "a;b", "--slurm_account=a;b: write one account name"),
    ("time", "12h", "--slurm_time=12h: write MINUTES, HH:MM:SS"),
    ("time", "1", "--slurm_warning_s=120: must be shorter than "
     "--slurm_time=1"),
    ("nodes", 0, "--slurm_nodes=0: a run needs at least one node"),
    ("gpus", "-1", "--slurm_gpus=-1: write GPUs per node as N or TYPE:N"),
    ("cpus", -2, "--slurm_cpus=-2: write CPUs per task"),
    ("mem", "64GB", "--slurm_mem=64GB: write memory per node"),
    ("warning_s", 0, "--slurm_warning_s=0: SLURM takes 1 to 65535 seconds"),
    ("parallel", -1, "--slurm_parallel=-1: write how many runs"),
    ("extra", ("qos=high",), "--slurm_extra=qos=high: write one long sbatch "
     "option"),
    ("extra", ("--time=5",), "--slurm_extra=--time=5: use --slurm_time"),
    ("extra", ("--output=x",), "--slurm_extra=--output=x: the sweep sets "
     "--output itself"),
])
def test_resources_slurm_would_refuse_name_the_flag(tmp_path, field, value,
                                                    says):
  slurm = sweep.Slurm(**{field: value})
  with pytest.raises(ValueError) as e:
    sweep.write_slurm(RUNS, str(tmp_path), 1.0, slurm=slurm)
  assert str(e.value).startswith(says) and "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "sweep.sbatch")


def test_time_limits_in_every_form_slurm_reads():
  seconds = {"90": 5400, "90:30": 5430, "12:00:00": 43200, "2-0": 172800,
             "2-12:30": 217800, "1-00:00:10": 86410}
  assert {t: sweep.time_limit_seconds(t) for t in seconds} == seconds
  for bad in ["", "1h", "-5", "1:2:3:4", "1-"]:
    assert sweep.time_limit_seconds(bad) is None


@pytest.fixture
def parsed_flags():
  """The sweep's flags at their defaults, as a script sees them."""
  was_parsed = flags.FLAGS.is_parsed()
  flags.FLAGS.mark_as_parsed()
  yield
  if not was_parsed:
    flags.FLAGS.unparse_flags()


def test_the_flags_reach_the_array_and_bad_ones_stop_it(tmp_path, capsys,
                                                        parsed_flags):
  with flagsaver.flagsaver(mode="slurm", root=str(tmp_path), slurm_gpus="2",
                           slurm_time="30", slurm_extra=["--qos=low"]):
    assert sweep.execute(RUNS) is False
  out = capsys.readouterr().out
  assert f"sbatch {tmp_path}/sweep.sbatch" in out
  options = sbatch_lines((tmp_path / "sweep.sbatch").read_text())
  assert {"--gres=gpu:2", "--time=30", "--qos=low"} <= set(options)
  with flagsaver.flagsaver(mode="slurm", root=str(tmp_path),
                           slurm_mem="lots"):
    with pytest.raises(SystemExit) as e:
      sweep.execute(RUNS)
  assert str(e.value).startswith("error: --slurm_mem=lots: write memory")
