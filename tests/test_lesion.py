"""cnnflax.lesion: a lesion scored through the project's eval step equals
training's evaluation of the net with those blocks removed."""
import jax
import numpy as np

from cnnflax import lesion, train
from cnnflax import run as run_lib
from tests.conftest import tiny_config


def trained(tmp_path):
  config = tiny_config(**{"model.name": "resnet20_cifar",
                          "dataset.synthetic_channels": 3,
                          "eval_batch_size": 16})
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  run = run_lib.Run(config, workdir)
  ckpts = run.checkpoints()
  state, _ = ckpts.restore(jax.device_get(run.init_state()))
  ckpts.close()
  return run, state


def evaluated_error(run, state, **model_fields) -> float:
  """Training's evaluation (train.evaluate) of the net with `model_fields`."""
  trained_model = run.model
  run.model = trained_model.clone(**model_fields)
  try:
    arrays = run.devices.replicate(train.data.device_arrays(
        run.dataset, run.config.dataset, False))
    metrics = train.evaluate(run, run.eval_fn(),
                             run.devices.replicate(state), arrays)
  finally:
    run.model = trained_model
  return 100.0 * (1.0 - metrics["top1_acc"])


def test_lesions_score_as_the_eval_step_scores_the_lesioned_net(tmp_path):
  run, state = trained(tmp_path)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  evaluator = lesion.Evaluator(run, variables, num_images=10_000)
  assert evaluator.num_images == run.dataset.num_test  # every example
  whole = evaluator.error()
  assert np.isclose(whole, evaluated_error(run, state), atol=1e-9)
  for deleted in ([4], [1, 7]):
    got = evaluator.error(deleted)
    assert np.isclose(got, evaluated_error(run, state,
                                           drop_blocks=tuple(deleted)),
                      atol=1e-9), deleted
  order = [0, 2, 1, 3, 4, 5, 6, 7, 8]
  assert np.isclose(evaluator.error(order=order),
                    evaluated_error(run, state, block_order=tuple(order)),
                    atol=1e-9)
