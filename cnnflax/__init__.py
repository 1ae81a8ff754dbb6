"""cnnflax: classic convolutional networks in JAX/Flax, faithful to their papers."""
import os

__version__ = "0.1.0"

# XLA:CPU options that make convolution nets train faster on CPUs (measured
# in benchmarks/): Eigen convolutions instead of YNNPACK's, and the compile
# preset that stops XLA from fusing whole residual chains into transposes.
# The third keeps the optimisation barriers of jax.checkpoint (remat): by
# default XLA:CPU removes them and merges the recomputation back into the
# forward pass, so the memory-efficient DenseNet saved nothing (DenseNet-BC
# L=190 k=40, batch 64: 33.4 GB of temporaries either way, 12.5 GB with it).
# They only touch the CPU backend. Added here, before jax starts, unless the
# user already chose a value for them or sets CNNFLAX_XLA_DEFAULTS=0.
CPU_XLA_FLAGS = {
    "--xla_cpu_opt_preset": "FAST_COMPILE",
    "--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution",
    "--xla_disable_hlo_passes": "cse_barrier_expander",
}


def _add_default_xla_flags() -> None:
  if os.environ.get("CNNFLAX_XLA_DEFAULTS", "1") == "0":
    return
  flags = os.environ.get("XLA_FLAGS", "")
  extra = [f"{k}={v}" for k, v in CPU_XLA_FLAGS.items() if k not in flags]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_add_default_xla_flags()
