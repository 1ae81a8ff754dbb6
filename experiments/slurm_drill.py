"""SLURM drill: a sweep's job array on a real one-node SLURM cluster.

Starts munged, slurmctld and slurmd for this host alone (Debian's slurm-wlm
and munge, installed with apt-get when missing; run as root), writes a job
array of four small runs through sweep.write_slurm, submits it with sbatch
and interrupts each task mid-run in one of the ways a cluster does:

  term       scancel --signal=TERM: the job step gets SIGTERM, as from
             --signal=TERM@N before the time limit or a preemption's grace
  timelimit  its time limit cut to one minute: SLURM itself sends the
             array's --signal=TERM@60 warning
  full       scancel --signal=TERM --full: the batch shell and srun get
             SIGTERM too, and srun kills the run at once
  requeue    scontrol requeue: the cluster ends and requeues the task, as
             PreemptMode=REQUEUE does

Each task must be requeued and resume from its checkpoint. Then the same
four commands run directly, one after another; every run's metrics,
evaluations, results and final parameters must equal its direct twin's.
Last, the array is submitted again and must leave every finished run alone.

  python experiments/slurm_drill.py --workdir=/tmp/cnnflax/slurm_drill

About fifteen minutes on 2 cores: SLURM holds a requeued task two minutes
before it starts it again. Prints a report; exits non-zero on a failure.
The cluster's state and logs stay under --workdir/cluster.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from absl import app, flags

import sweep

ROOT = sweep.ROOT
flags.DEFINE_string("workdir", "/tmp/cnnflax/slurm_drill",
                    "Scratch folder (emptied first).")
flags.DEFINE_integer("steps", 15000, "Training steps of each run; enough "
                     "that a run outlasts SLURM's 30 s time-limit checks.")
flags.DEFINE_integer("timeout_s", 1800, "Give up after this long.")
flags.DEFINE_bool("keep_cluster", False, "Leave the daemons running.")
FLAGS = flags.FLAGS

SCENARIOS = ("term", "timelimit", "full", "requeue")
START = time.time()


class DrillError(Exception):
  pass


def say(text: str) -> None:
  print(f"[{time.time() - START:5.0f}s] {text}", flush=True)


def sh(*cmd: str) -> str:
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    raise DrillError(f"{' '.join(cmd)}: {done.stderr.strip()}")
  return done.stdout


def wait_for(check, what: str, timeout_s: float | None = None):
  """Polls check() until it returns something true."""
  deadline = time.time() + (timeout_s or FLAGS.timeout_s)
  while time.time() < deadline:
    value = check()
    if value:
      return value
    time.sleep(1)
  raise DrillError(f"gave up waiting for {what}")


# --- the cluster -----------------------------------------------------------

def install() -> None:
  if all(shutil.which(p) for p in ("slurmctld", "slurmd", "sbatch",
                                   "munged")):
    return
  say("installing slurm-wlm and munge with apt-get")
  env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
  install_cmd = ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]
  if subprocess.run(install_cmd, env=env).returncode:
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
    subprocess.run(install_cmd, env=env, check=True)


def memory_mb() -> int:
  with open("/proc/meminfo") as f:
    total_kb = int(f.readline().split()[1])
  return int(total_kb / 1024 * 0.9)  # slurmd drains a node that has less


def slurm_conf(folder: str, host: str) -> str:
  return f"""\
ClusterName=drill
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=30
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={memory_mb()} State=UNKNOWN
PartitionName=drill Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster(folder: str) -> None:
  """munged, slurmctld and slurmd, all state under `folder`."""
  host = socket.gethostname().split(".")[0]
  for sub in ("state", "spool"):
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
  os.chmod(folder, 0o755)  # munged wants its socket's folder open to all
  conf = os.path.join(folder, "slurm.conf")
  with open(conf, "w") as f:
    f.write(slurm_conf(folder, host))
  key = os.path.join(folder, "munge.key")
  with open(key, "wb") as f:
    f.write(os.urandom(1024))
  os.chmod(key, 0o600)
  os.environ["SLURM_CONF"] = conf  # for sbatch, squeue, ... and the jobs
  sh("munged", f"--key-file={key}", f"--socket={folder}/munge.socket",
     f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
     f"--seed-file={folder}/munged.seed")
  sh("slurmctld", "-f", conf)
  sh("slurmd", "-f", conf)
  wait_for(lambda: "idle" in sh("sinfo", "-h", "-o", "%t"), "an idle node",
           60)
  say(f"cluster up: node {host}, 2 CPUs, partition drill ({conf})")


def stop_cluster(folder: str) -> None:
  for daemon in ("slurmd", "slurmctld", "munged"):
    path = os.path.join(folder, f"{daemon}.pid")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      pid = int(f.read())
    try:
      os.kill(pid, signal.SIGTERM)
      wait_for(lambda: not alive(pid), f"{daemon} to stop", 30)
    except (ProcessLookupError, DrillError):
      pass
  say("cluster stopped")


def alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
    return True
  except ProcessLookupError:
    return False


# --- the job array ---------------------------------------------------------

def drill_runs() -> list[sweep.Run]:
  """Four small runs (one per scenario) that train for about a minute."""
  base = {"model.name": "lenet5_modern", "dataset.name": "synthetic",
          "dataset.synthetic_channels": 1, "dataset.synthetic_train_size": 64,
          "dataset.synthetic_test_size": 40, "batch_size": 16,
          "eval_batch_size": 16, "num_train_steps": FLAGS.steps,
          "optimizer.learning_rate": 0.01, "log_every_steps": 250,
          "eval_every_steps": FLAGS.steps // 3,
          "checkpoint_every_steps": 1000}
  return [sweep.Run(name, "configs/default.py", {**base, "seed": i})
          for i, name in enumerate(SCENARIOS)]


# What the array asks for; --slurm_warning_s=60 so that a one-minute limit
# warns at once.
RESOURCES = sweep.Slurm(partition="drill", time="60", cpus=1, mem="2G",
                        warning_s=60, extra=("--comment=cnnflax slurm drill",))


def submit(path: str) -> str:
  out = sh("sbatch", path)
  return re.search(r"Submitted batch job (\d+)", out)[1]


def records(job: str) -> list[dict]:
  """scontrol's record of every task of the array (one per line)."""
  try:
    out = sh("scontrol", "show", "job", "-o", job)
  except DrillError:
    return []  # gone: finished longer than MinJobAge ago
  return [dict(re.findall(r"(\w+)=(\S*)", line))
          for line in out.splitlines() if line.strip()]


def task_record(job: str, index: int) -> dict:
  for r in records(job):
    if r.get("ArrayTaskId") == str(index):
      return r
  return {}


FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
         "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def all_done(job: str) -> bool:
  states = [r.get("JobState") for r in records(job)]
  return bool(states) and all(s in FINAL for s in states)


def log_path(root: str, job: str, index: int) -> str:
  return os.path.join(root, f"slurm-{job}_{index}.out")


def log_text(root: str, job: str, index: int) -> str:
  path = log_path(root, job, index)
  if not os.path.exists(path):
    return ""
  with open(path, errors="replace") as f:
    return f.read()


def mid_run(job: str, index: int, workdir: str) -> bool:
  """Running, with a checkpoint written, and far from its end."""
  step = sweep.newest_checkpoint(workdir)
  return (task_record(job, index).get("JobState") == "RUNNING"
          and step is not None and step < FLAGS.steps // 2)


def signal_task(*args: str) -> None:
  """scancel --signal=... While other tasks of the array still wait, SLURM
  22.05 delivers the signal yet answers "try again later", and scancel
  retries for a minute or more: it would signal the task's next start too.
  Stop it after the first try; the task's log shows what arrived."""
  try:
    subprocess.run(["scancel", *args], capture_output=True, timeout=3)
  except subprocess.TimeoutExpired:
    pass


def interrupt(scenario: str, task: str) -> str:
  """Interrupts the task the scenario's way; returns the command."""
  if scenario == "term":
    signal_task("--signal=TERM", task)
    return f"scancel --signal=TERM {task}"
  if scenario == "timelimit":
    sh("scontrol", "update", f"JobId={task}", "TimeLimit=1")
    return (f"scontrol update JobId={task} TimeLimit=1 (SLURM sends the "
            "SIGTERM)")
  if scenario == "full":
    signal_task("--signal=TERM", "--full", task)
    return f"scancel --signal=TERM --full {task}"
  sh("scontrol", "requeue", task)
  return f"scontrol requeue {task}"


def drive(job: str, root: str) -> dict[str, int]:
  """Interrupts each task once it is mid-run; gives each one's newest
  checkpoint then. The time-limit task gets its hour back once SLURM has
  warned it, so that its next start runs to the end."""
  interrupted, restored = {}, []

  def progress() -> bool:
    interrupt_ready(job, root, interrupted)
    if ("timelimit" in interrupted and not restored
        and restore_time_limit(job, root)):
      restored.append(True)
    return len(interrupted) == len(SCENARIOS) and bool(restored)

  wait_for(progress, "every task to be interrupted")
  return interrupted


def interrupt_ready(job: str, root: str, interrupted: dict) -> None:
  for index, scenario in enumerate(SCENARIOS):
    workdir = os.path.join(root, scenario)
    if scenario not in interrupted and mid_run(job, index, workdir):
      interrupted[scenario] = sweep.newest_checkpoint(workdir)
      how = interrupt(scenario, f"{job}_{index}")
      say(f"task {job}_{index} ({scenario}), newest checkpoint at step "
          f"{interrupted[scenario]}: {how}")


def restore_time_limit(job: str, root: str) -> bool:
  index = SCENARIOS.index("timelimit")
  if "requeued" not in log_text(root, job, index):
    return False
  sh("scontrol", "update", f"JobId={job}_{index}",
     f"TimeLimit={RESOURCES.time}")
  say(f"task {job}_{index} (timelimit): warned by SLURM, requeued; its time "
      f"limit is {RESOURCES.time} min again")
  return True


# --- checks ----------------------------------------------------------------

# What each task's log must show (besides a finished run and a restart).
EXPECTED = {
    "term": ("stopped: stopped by SIGTERM", "exit 143 after SIGTERM: requeued"),
    "timelimit": ("stopped: stopped by SIGTERM",
                  "exit 143 after SIGTERM: requeued"),
    "full": ("srun: forcing job termination", "after SIGTERM: requeued"),
    "requeue": ("DUE TO JOB REQUEUE", "while SLURM ends the task"),
}
KEY_LINES = ("[sweep ", "stopped:", "Resumed from", "srun: forcing",
             "srun: error", "CANCELLED AT", "Done: test")


def key_lines(text: str) -> list[str]:
  return [l.strip() for l in text.splitlines()
          if any(k in l for k in KEY_LINES)]


def check_task(scenario: str, index: int, job: str, root: str) -> list[str]:
  """The problems of one task (empty: it did what it should)."""
  record, text = task_record(job, index), log_text(root, job, index)
  problems = [f"log lacks {s!r}" for s in (*EXPECTED[scenario],
                                           "Resumed from") if s not in text]
  if record.get("JobState") != "COMPLETED":
    problems.append(f"ended {record.get('JobState')}, not COMPLETED")
  if int(record.get("Restarts", 0)) < 1:
    problems.append("was never requeued (Restarts=0)")
  if not os.path.exists(os.path.join(root, scenario, "results.json")):
    problems.append("wrote no results.json")
  return problems


def same_run(a: str, b: str) -> list[str]:
  """How two finished workdirs differ (empty: bit for bit the same)."""
  import numpy as np
  problems = []
  if sweep.run_outputs(a) != sweep.run_outputs(b):
    problems.append("metrics, evaluations or results differ")
  pa, pb = sweep.final_params(a), sweep.final_params(b)
  if len(pa) != len(pb) or not all(np.array_equal(x, y)
                                   for x, y in zip(pa, pb)):
    problems.append("final parameters differ")
  return problems


def run_directly(runs: list[sweep.Run], root: str) -> None:
  """The same commands outside SLURM, all at once, never interrupted."""
  started, procs = time.time(), {}
  for run in runs:
    log = open(os.path.join(root, f"{run.name}.log"), "w")
    procs[run.name] = (log, subprocess.Popen(
        sweep.command(run, root), cwd=ROOT, stdout=log,
        stderr=subprocess.STDOUT))
  for name, (log, proc) in procs.items():
    rc = proc.wait()
    log.close()
    if rc:
      raise DrillError(f"direct run {name} exited {rc}; see {log.name}")
  say(f"{len(runs)} direct runs: {time.time() - started:.0f} s")


def check_noop(runs: list[sweep.Run], root: str, path: str) -> list[str]:
  """A second submission of the array must leave finished runs alone."""
  problems = []
  if sweep.write_slurm(runs, root, 1.0, slurm=RESOURCES) is not None:
    problems.append("write_slurm wrote an array though every run finished")
  stamps = {r.name: os.stat(os.path.join(root, r.name, "results.json"))
            .st_mtime_ns for r in runs}
  job = submit(path)
  wait_for(lambda: all_done(job), "the second array to end", 300)
  for index, run in enumerate(runs):
    text = log_text(root, job, index)
    if "results.json exists: nothing to do" not in text:
      problems.append(f"{run.name}: second submission did not skip it")
    if os.stat(os.path.join(root, run.name, "results.json")
               ).st_mtime_ns != stamps[run.name]:
      problems.append(f"{run.name}: results.json was rewritten")
  say(f"array submitted again as job {job}: "
      f"{'every run skipped' if not problems else 'FAILED'}")
  return problems


# --- the drill -------------------------------------------------------------

def report_tasks(job: str, root: str, checkpoints: dict) -> list[str]:
  """Prints what each task went through; gives its problems."""
  problems = []
  for index, scenario in enumerate(SCENARIOS):
    record = task_record(job, index)
    found = check_task(scenario, index, job, root)
    problems += [f"{scenario}: {p}" for p in found]
    print(f"\n== task {job}_{index} ({scenario}): {record.get('JobState')}, "
          f"Restarts={record.get('Restarts')}, interrupted with its newest "
          f"checkpoint at step {checkpoints.get(scenario)}: "
          f"{'ok' if not found else 'FAILED: ' + '; '.join(found)}")
    for line in key_lines(log_text(root, job, index)):
      print("   " + line)
  print()
  return problems


def compare(runs: list[sweep.Run], root: str, direct: str) -> list[str]:
  """Each SLURM run against the same command run directly."""
  problems = []
  for run in runs:
    try:
      found = same_run(os.path.join(root, run.name),
                       os.path.join(direct, run.name))
    except Exception as e:  # a missing or unreadable output
      found = [f"could not compare: {e}"]
    problems += [f"{run.name}: {p}" for p in found]
    same = "metrics, evaluations, results and final parameters identical"
    say(f"{run.name}: SLURM run vs direct run: "
        f"{same if not found else 'FAILED: ' + '; '.join(found)}")
  return problems


def drill(folder: str) -> list[str]:
  root, direct = os.path.join(folder, "sweep"), os.path.join(folder, "direct")
  runs = drill_runs()
  path = sweep.write_slurm(runs, root, 1.0, slurm=RESOURCES)
  job = submit(path)
  say(f"submitted {path} as array job {job}: {len(runs)} runs of "
      f"{FLAGS.steps} steps, 1 CPU each")
  checkpoints = drive(job, root)
  wait_for(lambda: all_done(job), "every task to finish")
  say("every task of the array ended")
  problems = report_tasks(job, root, checkpoints)
  os.makedirs(direct, exist_ok=True)
  run_directly(runs, direct)
  problems += compare(runs, root, direct)
  return problems + check_noop(runs, root, path)


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)  # no orbax chatter
  if os.geteuid() != 0:
    sys.exit("error: run the drill as root: it installs and starts SLURM")
  install()
  shutil.rmtree(FLAGS.workdir, ignore_errors=True)
  cluster = os.path.join(FLAGS.workdir, "cluster")
  start_cluster(cluster)
  try:
    problems = drill(FLAGS.workdir)
  except DrillError as e:
    problems = [str(e)]
  finally:
    if not FLAGS.keep_cluster:
      subprocess.run(["scancel", "--user=root"], capture_output=True)
      stop_cluster(cluster)
  print(f"\nSLURM drill: {'PASSED' if not problems else 'FAILED'} "
        f"in {time.time() - START:.0f} s")
  for p in problems:
    print(f"  - {p}")
  if problems:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
