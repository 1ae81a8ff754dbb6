"""cnnflax's train step against PyTorch's on this CPU, side by side.

  python benchmarks/side_by_side.py \
      --models=resnet20,resnet56,densenet_bc100,preact_resnet164 \
      --trials=3 --steps=20 --out=side_by_side.md

For each model: train-step images/s (forward, backward, SGD with momentum,
weight decay and Nesterov as the model's config sets them, on one fixed
synthetic batch; CIFAR 32x32 batch 128, ResNet-50 224x224 batch 16) in

  torch_fp32    PyTorch eager, channels_last, float32
  torch_fp32_tcmalloc  the same with tcmalloc preloaded, the allocator
                cnnflax's entry points run with (cnnflax.allocator)
  torch_bf16    torch_fp32 under torch.autocast("cpu", dtype=torch.bfloat16)
  torch_compile_tcmalloc  torch_fp32_tcmalloc with torch.compile(model),
                for the models whose Spec says so (DenseNet-BC, where the
                issue's table names it PyTorch's fastest mode; it compiles
                for minutes)
  cnnflax_fp32  the real cnnflax train step (python -m cnnflax.benchmark)
  cnnflax_bf16  the same with config.half_precision=True
  cnnflax_fp32_xla_conv  cnnflax_fp32 with XLA's own convolutions
                (--config.backend.conv=xla) instead of oneDNN's
                (cnnflax/backend/native)
  cnnflax_fp32_autodiff_bn  cnnflax_fp32 with BatchNorm differentiated by
                autodiff (--config.backend.batch_norm=autodiff) instead of
                by its hand-written VJP (cnnflax/models/norm.py)
  cnnflax_fp32_system_malloc  cnnflax_fp32 with the C library's malloc
                (--config.backend.allocator=system)

each the median of --trials runs of --steps steps, after one compilation and
--warmup untimed steps (with --rounds=R: of all trials of R such processes
per mode, the modes taken in turn R times). Every measurement runs in a
subprocess of its own, so that XLA's and PyTorch's thread pools never
compete for the cores; so do the
matmul ceilings (an N x N by N x N matmul, best of a few: XLA fp32 and bf16
with cnnflax's XLA flags, PyTorch fp32 and bf16). Achieved GFLOP/s is
6 x forward multiply-adds x images/s (2 FLOPs per multiply-add forward, 4
backward), with the multiply-adds of `python -m cnnflax.summary`; the
PyTorch twins (benchmarks/torch_models.py) are checked to have the same
parameters and multiply-adds.

The cnnflax step also augments (crop, flip) and normalises its batch on the
device, as in training; the PyTorch step takes its batch as it is.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable

from absl import app, flags

SCRIPT = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(SCRIPT))
FLAGS = flags.FLAGS

# Each mode and its column in the summary table.
MODES = {"torch_fp32": "PyTorch fp32 CL",
         "torch_fp32_tcmalloc": "PyTorch fp32 CL, tcmalloc",
         "torch_bf16": "PyTorch bf16 autocast",
         "torch_compile_tcmalloc": "PyTorch fp32 torch.compile, tcmalloc",
         "cnnflax_fp32": "cnnflax fp32",
         "cnnflax_bf16": "cnnflax bf16",
         "cnnflax_fp32_xla_conv": "cnnflax fp32, XLA convs",
         "cnnflax_fp32_autodiff_bn": "cnnflax fp32, autodiff BN",
         "cnnflax_fp32_system_malloc": "cnnflax fp32, C library malloc"}
# The ablations: what each changes in cnnflax_fp32's config (its backend
# section), and the column of cnnflax_fp32's speed-up over it.
ABLATIONS = {
    "cnnflax_fp32_xla_conv": ("--config.backend.conv=xla",
                              "oneDNN convs / XLA convs"),
    "cnnflax_fp32_autodiff_bn": ("--config.backend.batch_norm=autodiff",
                                 "BN VJP / autodiff BN"),
    "cnnflax_fp32_system_malloc": ("--config.backend.allocator=system",
                                   "cnnflax allocator / C library malloc")}
# The head-to-head ratios: (numerator mode, denominator mode).
RATIOS = (("cnnflax_fp32", "torch_fp32"),
          ("cnnflax_fp32", "torch_fp32_tcmalloc"),
          ("cnnflax_fp32", "torch_compile_tcmalloc"),
          ("cnnflax_bf16", "torch_bf16"))
PER_FLOP = (("cnnflax_fp32", "torch_fp32"), ("cnnflax_bf16", "torch_bf16"))
WORKERS = ("torch", "torch_matmul", "xla_matmul")


@dataclasses.dataclass(frozen=True)
class Spec:
  config: str  # configs/FILE.py[:ARG], as cnnflax's CLIs take it
  registered: str  # the cnnflax model that config builds
  batch_size: int
  torch_model: Callable  # benchmarks.torch_models -> torch.nn.Module
  torch_compile: bool = False  # also measure torch_compile_tcmalloc
  overrides: tuple[str, ...] = ()  # --config.x=y for cnnflax's side
  num_classes: int = 10
  twin: str = "torch_models.py"  # where the PyTorch model comes from


def torchvision_model(name: str, **kwargs) -> Callable:
  """A torchvision model with random weights (the user's other choice)."""
  def build(_):
    return getattr(import_torchvision().models, name)(weights=None, **kwargs)
  return build


def timm_model(name: str) -> Callable:
  def build(_):
    import_torchvision()  # timm imports it
    import timm
    return timm.create_model(name, pretrained=False)
  return build


def import_torchvision():
  """torchvision, also beside the local CPU torch wheel that PyPI's
  torchvision's compiled ops do not fit (see cnnflax.convert)."""
  repo_on_path()
  from cnnflax.convert import import_torchvision as load
  return load()


MODELS = {
    "resnet20": Spec("configs/resnet_cifar.py:20", "resnet20_cifar", 128,
                     lambda tm: tm.CifarResNet(20)),
    "resnet56": Spec("configs/resnet_cifar.py:56", "resnet56_cifar", 128,
                     lambda tm: tm.CifarResNet(56)),
    "densenet_bc100": Spec("configs/densenet_bc.py",
                           "densenet_bc100_k12_cifar", 128,
                           lambda tm: tm.DenseNetBC(100, 12),
                           torch_compile=True),
    "preact_resnet164": Spec("configs/preact_resnet_cifar.py:164",
                             "preact_resnet164_cifar", 128,
                             lambda tm: tm.PreActResNetCifar(164)),
    "resnet50": Spec("configs/resnet50.py", "resnet50", 16,
                     lambda tm: tm.ResNet50(), num_classes=1000),
    # The ImageNet families against the models a user would otherwise pick
    # (issue 21): torchvision's, and timm's for Inception v4 / -ResNet-v2.
    # Where the two differ in layers, compare the GFLOP/s columns.
    "resnet50_tv": Spec("configs/resnet50.py", "resnet50", 16,
                        torchvision_model("resnet50"), num_classes=1000,
                        twin="torchvision"),
    "vgg16": Spec("configs/vgg.py:D", "vgg16", 16, torchvision_model("vgg16"),
                  num_classes=1000, twin="torchvision"),
    "googlenet": Spec("configs/googlenet.py", "googlenet_bn", 16,
                      torchvision_model("googlenet", aux_logits=True,
                                        init_weights=True),
                      overrides=("--config.model.name=googlenet_bn",),
                      num_classes=1000, twin="torchvision"),
    "inception_v3": Spec("configs/inception_v3.py", "inception_v3", 16,
                         torchvision_model("inception_v3", aux_logits=True,
                                           init_weights=True),
                         num_classes=1000, twin="torchvision"),
    "densenet121": Spec("configs/densenet121.py", "densenet121", 16,
                        torchvision_model("densenet121"), num_classes=1000,
                        twin="torchvision"),
    "mobilenet_v2": Spec("configs/mobilenet_v2.py", "mobilenet_v2", 16,
                         torchvision_model("mobilenet_v2"), num_classes=1000,
                         twin="torchvision"),
    # torchvision's AlexNet is the one-column 2014 variant (64-192-384-256-
    # 256 maps); cnnflax's alexnet_ungrouped has the paper's widths:
    # compare per FLOP.
    "alexnet": Spec("configs/alexnet.py", "alexnet_ungrouped", 16,
                    torchvision_model("alexnet"),
                    overrides=("--config.model.name=alexnet_ungrouped",),
                    num_classes=1000, twin="torchvision"),
    "inception_v4": Spec("configs/inception_v4.py", "inception_v4", 16,
                         timm_model("inception_v4"), num_classes=1000,
                         twin="timm"),
    "inception_resnet_v2": Spec("configs/inception_resnet_v2.py",
                                "inception_resnet_v2", 16,
                                timm_model("inception_resnet_v2"),
                                num_classes=1000, twin="timm"),
}


def define_flags() -> None:
  """Only for the script, so that tests can import this module next to
  cnnflax's CLIs, whose flags share these names."""
  flags.DEFINE_list("models", "resnet20,resnet56,densenet_bc100,"
                    "preact_resnet164", f"Of: {', '.join(MODELS)}.")
  flags.DEFINE_list("modes", ",".join(MODES), f"Of: {', '.join(MODES)}.")
  flags.DEFINE_integer("steps", 20, "Timed steps per trial.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
  flags.DEFINE_integer("rounds", 1, "Passes over the modes, each mode in a "
                       "fresh process; a mode's figure is the median of its "
                       "trials from all rounds.")
  flags.DEFINE_integer("trials", 3, "Timed runs of --steps; the median "
                       "counts.")
  flags.DEFINE_integer("matmul_size", 2048, "N of the N x N matmul ceilings.")
  flags.DEFINE_integer("torch_threads", 0, "PyTorch's intra-op threads; 0: "
                       "os.cpu_count(). On a loaded machine OpenMP's spinning "
                       "workers wait for each other: use 1, or run with "
                       "OMP_WAIT_POLICY=PASSIVE.")
  flags.DEFINE_string("out", "", "Also write the report here (markdown).")
  flags.DEFINE_enum("worker", "", ("",) + WORKERS, "Internal: run one "
                    "measurement and print it as a JSON line.")
  flags.DEFINE_string("model", "", "Internal: the --worker=torch model.")
  flags.DEFINE_bool("bf16", False, "Internal: --worker=torch under autocast.")
  flags.DEFINE_bool("compile", False, "Internal: --worker=torch with "
                    "torch.compile.")


# --- arithmetic --------------------------------------------------------------


def achieved_gflops(forward_macs: float, images_per_sec: float) -> float:
  """Training GFLOP/s: per multiply-add, 2 FLOPs forward and 4 backward
  (the gradients of the inputs and of the weights)."""
  return 6 * forward_macs * images_per_sec / 1e9


def matmul_gflops(n: int, seconds: float) -> float:
  return 2 * n ** 3 / seconds / 1e9


def best_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
  """Best of `repeats` timed calls after one untimed (compiling) call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


# --- workers: each runs in its own process and prints one JSON line ----------


def repo_on_path() -> None:
  """cnnflax and configs/ from this checkout (the script's own folder is
  what Python puts first on the path)."""
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def load_config(path: str):
  """A configs/*.py[:ARG] file's config, loaded without cnnflax or jax."""
  repo_on_path()
  file, _, arg = path.partition(":")
  module = importlib.import_module(
      os.path.splitext(file)[0].replace("/", "."))
  return module.get_config(arg) if arg else module.get_config()


def torch_worker(name: str, bf16: bool, steps: int, warmup: int,
                 trials: int, threads: int, compile_: bool = False) -> dict:
  import torch
  import torch.nn.functional as F

  import torch_models
  torch.set_num_threads(threads or os.cpu_count())
  spec = MODELS[name]
  config = load_config(spec.config)
  size = config.dataset.image_size
  model = spec.torch_model(torch_models)
  macs = torch_models.forward_macs(model, (3, size, size))
  model = model.to(memory_format=torch.channels_last).train()
  params = torch_models.param_count(model)
  if compile_:
    model = torch.compile(model)
  opt = config.optimizer
  sgd = torch.optim.SGD(model.parameters(), lr=opt.learning_rate,
                        momentum=opt.momentum, nesterov=opt.nesterov,
                        weight_decay=opt.weight_decay)
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(spec.batch_size, 3, size, size, generator=gen).contiguous(
      memory_format=torch.channels_last)
  y = torch.randint(0, spec.num_classes, (spec.batch_size,), generator=gen)
  aux_weights = tuple(config.aux_loss_weights)

  def step():
    sgd.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      logits, *aux = outputs(model(x))
      # The auxiliary heads train too, weighted as cnnflax's config does.
      loss = F.cross_entropy(logits, y) + sum(
          w * F.cross_entropy(a, y) for w, a in zip(aux_weights, aux))
    loss.backward()
    sgd.step()

  start = time.perf_counter()
  step()  # builds oneDNN's kernels (and with compile_, compiles)
  compile_s = round(time.perf_counter() - start, 1)
  for _ in range(warmup):
    step()
  rates = []
  for _ in range(trials):
    start = time.perf_counter()
    for _ in range(steps):
      step()
    rates.append(round(steps * spec.batch_size / (
        time.perf_counter() - start), 1))
  out = {"model": name, "images_per_sec": round(statistics.median(rates), 1),
         "images_per_sec_trials": rates, "batch_size": spec.batch_size,
         "params": params, "forward_macs": macs,
         "threads": torch.get_num_threads(), "torch": torch.__version__}
  return {**out, "compile_s": compile_s} if compile_ else out


def outputs(out) -> list:
  """[logits, *auxiliary logits] of a torch model's training output
  (torchvision's GoogLeNet and Inception v3 return named tuples)."""
  if hasattr(out, "shape"):
    return [out]
  return [o for o in out if o is not None]


def torch_matmul_worker(n: int, threads: int) -> dict:
  import torch
  torch.set_num_threads(threads or os.cpu_count())
  out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
  for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
    a, b = (torch.randn(n, n).to(dtype) for _ in range(2))
    out[label] = round(matmul_gflops(n, best_seconds(lambda: a @ b)), 1)
  return out


def xla_matmul_worker(n: int) -> dict:
  repo_on_path()
  from cnnflax import backend  # the XLA flags that cnnflax trains with
  os.environ["XLA_FLAGS"] = backend.with_xla_defaults(
      os.environ.get("XLA_FLAGS", ""))
  import jax
  import jax.numpy as jnp
  matmul = jax.jit(jnp.matmul)
  out = {"jax": jax.__version__, "backend": jax.default_backend()}
  for label, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
    a, b = (jax.random.normal(jax.random.key(i), (n, n), dtype)
            for i in range(2))
    seconds = best_seconds(lambda: matmul(a, b).block_until_ready())
    out[label] = round(matmul_gflops(n, seconds), 1)
  return out


def run_as_worker() -> dict:
  if FLAGS.worker == "torch":
    return torch_worker(FLAGS.model, FLAGS.bf16, FLAGS.steps, FLAGS.warmup,
                        FLAGS.trials, FLAGS.torch_threads, FLAGS.compile)
  if FLAGS.worker == "torch_matmul":
    return torch_matmul_worker(FLAGS.matmul_size, FLAGS.torch_threads)
  return xla_matmul_worker(FLAGS.matmul_size)


# --- the driver --------------------------------------------------------------


def worker_command(name: str, mode: str) -> list[str]:
  spec = MODELS[name]
  timing = [f"--steps={FLAGS.steps}", f"--warmup={FLAGS.warmup}",
            f"--trials={FLAGS.trials}"]
  bf16 = mode.endswith("bf16")
  if mode.startswith("torch"):
    return [SCRIPT, "--worker=torch", f"--model={name}", f"--bf16={bf16}",
            f"--compile={'compile' in mode}",
            f"--torch_threads={FLAGS.torch_threads}", *timing]
  ablation = [ABLATIONS[mode][0]] if mode in ABLATIONS else []
  return ["-m", "cnnflax.benchmark", f"--config={spec.config}",
          *spec.overrides, f"--config.batch_size={spec.batch_size}",
          f"--config.half_precision={bf16}", *ablation, *timing]


def count_command(name: str) -> list[str]:
  spec = MODELS[name]
  return ["-m", "cnnflax.summary", f"--config={spec.config}",
          *spec.overrides, "--json"]


def worker_env(mode: str) -> dict[str, str]:
  """The mode's environment; ValueError where it cannot be had (no
  tcmalloc for torch_fp32_tcmalloc)."""
  extra = {}
  if mode.startswith("torch") and mode.endswith("_tcmalloc"):
    repo_on_path()
    from cnnflax.backend import allocator
    extra = allocator.plan({allocator.ENV: "tcmalloc"},
                           allocator.find_tcmalloc, lambda: False)
  return {**os.environ, **extra}


def run_worker(args: list[str], env: dict[str, str] | None = None) -> dict:
  """Runs `python ARGS` in the repository; its last JSON line, or
  {"error": ...} with the end of its stderr echoed here."""
  proc = subprocess.run([sys.executable, *args], cwd=ROOT, text=True,
                        capture_output=True, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode == 0 and lines:
    return json.loads(lines[-1])
  print(proc.stderr[-3000:], file=sys.stderr)
  return {"error": f"exit {proc.returncode}: python {shlex.join(args)}"}


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def progress(entry: dict) -> str:
  if "error" in entry:
    return f"failed ({entry['error']})"
  compiled = (f", compile {entry['compile_s']} s" if "compile_s" in entry
              else "")
  return f"{entry['images_per_sec']} images/s{compiled}"


def run_mode(name: str, mode: str) -> dict:
  try:
    env = worker_env(mode)
  except ValueError as e:
    return {"error": str(e)}
  return run_worker(worker_command(name, mode), env)


def merge(before: dict | None, entry: dict) -> dict:
  """One mode's rounds as one entry: every trial, their median, and the
  first round's other fields; a failed round fails the mode."""
  if before is None or "error" in before:
    return before or entry
  if "error" in entry:
    return entry
  trials = before["images_per_sec_trials"] + entry["images_per_sec_trials"]
  return {**before, "images_per_sec_trials": trials,
          "images_per_sec": round(statistics.median(trials), 1)}


def applies(name: str, mode: str) -> bool:
  return mode != "torch_compile_tcmalloc" or MODELS[name].torch_compile


def measure(models: list[str], modes: list[str]) -> tuple[dict, dict]:
  """The matmul ceilings, then each model's counts and modes in turn."""
  n = FLAGS.matmul_size
  log(f"matmul ceilings ({n}x{n}) ...")
  ceilings = {
      "xla": run_worker([SCRIPT, "--worker=xla_matmul",
                         f"--matmul_size={n}"]),
      "torch": run_worker([SCRIPT, "--worker=torch_matmul",
                           f"--matmul_size={n}",
                           f"--torch_threads={FLAGS.torch_threads}"])}
  log(f"  {json.dumps(ceilings)}")
  results = {}
  for name in models:
    results[name] = {"count": run_worker(count_command(name))}
    # Round-robin over the modes, so that a slow spell of a shared machine
    # falls on every mode alike rather than on one.
    for round_ in range(FLAGS.rounds):
      for mode in (m for m in modes if applies(name, m)):
        log(f"{name} {mode} (round {round_ + 1}/{FLAGS.rounds}) ...")
        entry = run_mode(name, mode)
        log(f"  {progress(entry)}")
        results[name][mode] = merge(results[name].get(mode), entry)
  return ceilings, results


# --- the report --------------------------------------------------------------


def rate(entry: dict | None) -> float | None:
  return (entry or {}).get("images_per_sec")


def cell(value: float | None, fmt: str = "{:.1f}") -> str:
  return "-" if value is None else fmt.format(value)


def ratio(a: float | None, b: float | None) -> str:
  return "-" if not a or not b else f"{a / b:.2f}x"


def rate_cell(entry: dict | None) -> str:
  if entry is None:
    return "-"
  return "failed" if "error" in entry else cell(rate(entry))


def gflops_of(result: dict, mode: str) -> float | None:
  """Achieved GFLOP/s of one mode, from cnnflax's multiply-add count."""
  macs = result.get("count", {}).get("flops")
  images_per_sec = rate(result.get(mode))
  return achieved_gflops(macs, images_per_sec) if macs and images_per_sec \
      else None


def share(gflops: float | None, ceiling: float | None) -> float | None:
  return gflops / ceiling if gflops and ceiling else None


def per_flop(result: dict, ours: str, theirs: str) -> str:
  """cnnflax's training FLOP/s over PyTorch's, each from its own network's
  multiply-adds: the fair ratio where the twins differ (AlexNet)."""
  macs = result.get("count", {}).get("flops")
  entry = result.get(theirs) or {}
  if not macs or not entry.get("forward_macs"):
    return "-"
  return ratio(achieved_gflops(macs, rate(result.get(ours)) or 0),
               achieved_gflops(entry["forward_macs"], rate(entry) or 0))


def summary_row(name: str, result: dict, ceiling: float | None) -> str:
  gflops = gflops_of(result, "cnnflax_fp32")
  achieved = cell(gflops)
  if gflops and ceiling:
    achieved += f" ({share(gflops, ceiling):.2f})"
  cells = [name, MODELS[name].twin, *(rate_cell(result.get(m)) for m in MODES),
           *(ratio(rate(result.get(a)), rate(result.get(b)))
             for a, b in RATIOS),
           *(per_flop(result, a, b) for a, b in PER_FLOP), achieved,
           *(ratio(rate(result.get("cnnflax_fp32")), rate(result.get(mode)))
             for mode in ABLATIONS)]
  return "| " + " | ".join(cells) + " |"


def summary_header() -> list[str]:
  names = ["model", "PyTorch twin", *MODES.values(),
           *(f"{MODES[a]} / {MODES[b]}" for a, b in RATIOS),
           *(f"{MODES[a]} / {MODES[b]}, per FLOP" for a, b in PER_FLOP),
           "cnnflax fp32 GFLOP/s (fraction of ceiling)",
           *(label for _, label in ABLATIONS.values())]
  return ["| " + " | ".join(names) + " |",
          "|---|" + "---:|" * (len(names) - 1)]


def detail_rows(name: str, result: dict, ceiling: float | None) -> list[str]:
  """One row per measured mode: its trials, GFLOP/s and share of the XLA
  fp32 matmul ceiling."""
  rows = []
  for mode in MODES:
    entry = result.get(mode)
    if entry is None:
      continue
    trials = ", ".join(map(str, entry.get("images_per_sec_trials", [])))
    gflops = gflops_of(result, mode)
    note = (f"compile {entry['compile_s']} s" if "compile_s" in entry
            else entry.get("error", ""))
    rows.append(f"| {name} | {mode} | {MODELS[name].batch_size} | "
                f"{rate_cell(entry)} | {trials} | {cell(gflops)} | "
                f"{cell(share(gflops, ceiling), '{:.3f}')} | {note} |")
  return rows


def twin_warnings(results: dict) -> list[str]:
  """Where a PyTorch twin's parameters or multiply-adds differ from
  cnnflax's, its timings compare different networks."""
  lines = []
  for name, result in results.items():
    count = result.get("count", {})
    for mode in (m for m in MODES if m.startswith("torch")):
      entry = result.get(mode) or {}
      for key, theirs in (("params", "params"), ("flops", "forward_macs")):
        if theirs in entry and count.get(key) not in (None, entry[theirs]):
          lines.append(f"**warning**: {name} {mode}: PyTorch {theirs}="
                       f"{entry[theirs]:,}, cnnflax {count[key]:,}")
  return lines


def machine() -> str:
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  except OSError:
    text = ""
  info = {k.strip(): v.strip() for k, v in (
      l.split(":", 1) for l in text.splitlines() if ":" in l)}
  model = info.get("Model name", "unknown CPU")
  # What bf16 speed hangs on: native bf16 dot products or not.
  isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
         if f in info.get("Flags", "").split()]
  return f"{model}, {os.cpu_count()} cores" + (
      f" ({', '.join(isa)})" if isa else "")


def report(ceilings: dict, results: dict, command: str) -> str:
  xla, torch = ceilings["xla"], ceilings["torch"]
  n = FLAGS.matmul_size
  lines = [
      "# cnnflax vs PyTorch: train-step images/s on CPU", "",
      f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
      f"- machine: {machine()}",
      f"- versions: jax {xla.get('jax', '?')}, torch {torch.get('torch', '?')} "
      f"({torch.get('threads', '?')} threads)",
      f"- command: `{command}`",
      f"- each cell: median of {FLAGS.rounds} round(s) x {FLAGS.trials} "
      f"trial(s) of {FLAGS.steps} steps after {FLAGS.warmup} warm-up steps; "
      "the modes of a model taken in turn each round; CIFAR batch 128 at 32x32, "
      "ImageNet nets batch 16 at their papers' sizes (224; Inception 299, "
      "AlexNet 227)",
      f"- matmul ceilings ({n}x{n} @ {n}x{n}, best of 5, GFLOP/s): XLA fp32 "
      f"{xla.get('fp32', '-')}, XLA bf16 {xla.get('bf16', '-')}, PyTorch "
      f"fp32 {torch.get('fp32', '-')}, PyTorch bf16 {torch.get('bf16', '-')}",
      "- GFLOP/s = 6 x forward multiply-adds (cnnflax.summary) x images/s; "
      "fraction: of the XLA fp32 matmul ceiling", ""]
  lines += [l + "  " for l in twin_warnings(results)]
  ceiling = xla.get("fp32")
  lines += summary_header()
  lines += [summary_row(name, r, ceiling) for name, r in results.items()]
  lines += ["", "| model | mode | batch | images/s | trials | GFLOP/s | "
            "fraction of XLA fp32 matmul | note |",
            "|---|---|---:|---:|---|---:|---:|---|"]
  for name, r in results.items():
    lines += detail_rows(name, r, ceiling)
  return "\n".join(lines) + "\n"


def check_choices(values: list[str], choices, flag: str) -> None:
  bad = [v for v in values if v not in choices]
  if bad:
    raise app.UsageError(f"--{flag}: {', '.join(bad)} unknown; choose from "
                         f"{', '.join(choices)}")


def main(argv):
  del argv
  if FLAGS.worker:
    print(json.dumps(run_as_worker()))
    return
  check_choices(FLAGS.models, MODELS, "models")
  check_choices(FLAGS.modes, MODES, "modes")
  command = shlex.join(["python", *sys.argv])
  ceilings, results = measure(FLAGS.models, FLAGS.modes)
  text = report(ceilings, results, command)
  print(text, end="")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      f.write(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
