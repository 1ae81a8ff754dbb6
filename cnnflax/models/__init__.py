"""Model registry: every architecture by name, with its paper's reference numbers.

An entry is a module class plus the field values that make the named variant
(e.g. `resnet20` = CifarResNet with depth=20). Users override any field from
the config: `--config.model.name=lenet5 --config.model.activation=relu`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from cnnflax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """A registered model and the numbers its paper (or the standard code) gives."""
  name: str
  module: type[nn.Module]
  fields: dict[str, Any]
  paper: str = ""
  input_shape: tuple[int, int, int] = (224, 224, 3)  # where `params`/`flops` hold
  num_classes: int = 1000
  params: int | None = None  # exact count from the standard implementation
  params_paper: float | None = None  # as the paper rounds it
  flops: int | None = None  # multiply-adds per image
  error: float | None = None  # reported top-1 test error, percent
  dataset: str = ""


_REGISTRY: dict[str, ModelInfo] = {}

# Fields that the training system sets; every model module declares them.
SYSTEM_FIELDS = ("num_classes", "dtype", "axis_name")


def register_model(name: str, module: type[nn.Module], **info: Any) -> None:
  """Registers `module` under `name`; `fields=` fixes the variant's fields."""
  if name in _REGISTRY:
    raise ValueError(f"model {name!r} is registered twice")
  fields = dict(info.pop("fields", {}))
  _check_fields(name, module, fields)
  _REGISTRY[name] = ModelInfo(name=name, module=module, fields=fields, **info)


def list_models() -> list[str]:
  return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
  if name not in _REGISTRY:
    raise ConfigError(
        f"config.model.name={name!r} is not a registered model; "
        f"choose one of: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


def get_model(name: str, **fields: Any) -> nn.Module:
  """Builds the named model; `fields` override the registered variant's."""
  info = model_info(name)
  merged = {"num_classes": info.num_classes, **info.fields, **fields}
  _check_fields(name, info.module, merged)
  try:
    return info.module(**merged)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.model ({name}): {e}") from None


def module_fields(module: type[nn.Module]) -> list[str]:
  return [f.name for f in dataclasses.fields(module)
          if f.name not in ("parent", "name") and f.init]


def _check_fields(name: str, module: type[nn.Module], fields: dict) -> None:
  known = set(module_fields(module))
  for key in fields:
    if key not in known:
      raise ConfigError(
          f"config.model.{key}: model {name!r} has no field {key!r}; "
          f"its fields are: {', '.join(sorted(known - set(SYSTEM_FIELDS)))}")


# Importing a family module registers its models.
from cnnflax.models import lenet  # noqa: E402,F401
from cnnflax.models import resnet  # noqa: E402,F401
from cnnflax.models import alexnet  # noqa: E402,F401
from cnnflax.models import vgg  # noqa: E402,F401
from cnnflax.models import nin  # noqa: E402,F401
from cnnflax.models import googlenet  # noqa: E402,F401
from cnnflax.models import highway  # noqa: E402,F401
from cnnflax.models import densenet  # noqa: E402,F401
from cnnflax.models import mobilenet  # noqa: E402,F401
from cnnflax.models import inception  # noqa: E402,F401
from cnnflax.models import inception_v4  # noqa: E402,F401
