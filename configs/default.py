"""Defaults for every run: LeNet-5 on the bundled scikit-learn digits.

Needs no network and no download; on a 2-core CPU it reaches about 97-98%
test accuracy in well under a minute:

  python main.py --config=configs/default.py --workdir=/tmp/cnnflax/default

Every other config imports this one and overrides what its paper sets.
"""
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet5"

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "digits"
  c.dataset.data_dir = ""  # local copy in the official layout, or TFDS dir
  c.dataset.image_size = 32
  c.dataset.augment = "none"  # none | cifar | imagenet
  c.dataset.crop_padding = 4  # cifar augmentation: zero pad, random crop
  c.dataset.flip = True  # horizontal flips (cifar / imagenet augmentation)
  c.dataset.normalize = True  # per-channel mean/std of the training set
  c.dataset.on_device = True  # small datasets live in device memory
  c.dataset.test_fraction = 0.2  # digits only: held-out share
  c.dataset.split_seed = 0  # digits only: seed of the train/test split
  c.dataset.synthetic_train_size = 1024  # synthetic only
  c.dataset.synthetic_test_size = 256
  c.dataset.synthetic_num_classes = 10
  c.dataset.synthetic_channels = 3
  c.dataset.prefetch = 2  # host batches prepared ahead (streamed datasets)
  # Streamed datasets: grain worker processes that decode and crop; -1: one
  # per core this process may use, less one (the same pixels for any count).
  c.dataset.workers = -1
  c.dataset.version = ""  # TFDS version to read; "": the newest prepared
  # MNIST / CIFAR: fetch the official archives (checksum-verified) when no
  # local or TFDS copy is found, into data_dir or ~/.cache/cnnflax/datasets.
  c.dataset.download = True
  # Streamed training crops: random_resized (Inception's area and aspect),
  # scale (VGG: short side S uniform in scale_range, random crop) or square
  # (AlexNet: the central square at S x S, random crop).
  c.dataset.train_crop = "random_resized"
  c.dataset.scale_range = (256, 512)
  c.dataset.pca_noise = 0.0  # AlexNet's PCA colour noise std (paper: 0.1)

  # How the network is computed, never what: cnnflax/backend/__init__.py.
  # config.json records the resolved values.
  c.backend = ml_collections.ConfigDict()
  c.backend.platform = "auto"  # auto | cpu | cuda | rocm | tpu | cuda,tpu
  c.backend.conv = "auto"  # auto | onednn | xla | matmul
  c.backend.scanned_conv = "auto"  # the same, inside scanned stages
  c.backend.depthwise = "auto"  # auto | matmul | xla
  c.backend.batch_norm = "auto"  # auto | vjp | autodiff
  c.backend.max_pool = "auto"  # auto | xla | windows
  # Chosen when the process starts: give it on the command line.
  c.backend.allocator = os.environ.get("CNNFLAX_ALLOCATOR", "auto")
  c.backend.xla_defaults = os.environ.get("CNNFLAX_XLA_DEFAULTS", "1") != "0"

  c.batch_size = 64  # global, over all devices and hosts
  c.eval_batch_size = 500
  c.num_epochs = 30.0
  c.num_train_steps = -1  # > 0 overrides num_epochs

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"  # sgd | rmsprop | adam
  c.optimizer.learning_rate = 0.05
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 5e-4  # L2 added to the gradient, as the papers
  c.optimizer.decay_bias_and_bn = True  # the papers decay every parameter
  c.optimizer.rmsprop_decay = 0.9
  c.optimizer.epsilon = 1e-8  # rmsprop / adam
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.grad_clip_norm = 0.0  # > 0 clips the global gradient norm

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "cosine"  # constant | piecewise | cosine | exponential
  c.schedule.boundaries = ()  # piecewise: where the rate is multiplied
  c.schedule.boundaries_unit = "epochs"  # steps | epochs | fraction
  c.schedule.decay_factor = 0.1  # piecewise / exponential multiplier
  c.schedule.decay_every_epochs = 2.0  # exponential (Inception v3: 0.94/2)
  c.schedule.warmup_steps = 0
  c.schedule.warmup_epochs = 0.0
  c.schedule.warmup_type = "linear"  # linear | constant
  c.schedule.warmup_learning_rate = 0.0  # start of linear / value of constant
  c.schedule.final_learning_rate = 0.0  # cosine floor

  c.label_smoothing = 0.0
  c.aux_loss_weights = ()  # one weight per auxiliary head (GoogLeNet: 0.3)

  c.seed = 0
  c.half_precision = False  # float32 parameters, bfloat16 compute
  c.parallelism = "shard_map"  # shard_map | pmap
  c.batch_norm_sync = True  # BN statistics over the global batch

  c.log_every_steps = 50
  c.eval_every_steps = -1  # -1: once per epoch; 0: only at the end
  c.checkpoint_every_steps = 500
  c.checkpoints_to_keep = 3
  # Write checkpoints in a background thread while training goes on (a copy
  # of the state is taken first); False waits for each write.
  c.checkpoint_async = True
  return c


def cifar10(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """CIFAR-10 as the papers train on it: 4-pixel pad, 32x32 crop, flip."""
  c.dataset.name = "cifar10"
  c.dataset.image_size = 32
  c.dataset.augment = "cifar"
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  return c


def imagenet(c: ml_collections.ConfigDict,
             image_size: int = 224) -> ml_collections.ConfigDict:
  """ImageNet: random-resized crops and flips, centre crops to evaluate."""
  c.dataset.name = "imagenet2012"
  c.dataset.image_size = image_size
  c.dataset.augment = "imagenet"
  c.dataset.prefetch = 4
  c.batch_size = 256
  c.eval_batch_size = 500
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5_000
  return c


def exponential_rmsprop(c: ml_collections.ConfigDict,
                        decay_factor: float = 0.94,
                        decay_every_epochs: float = 2.0
                        ) -> ml_collections.ConfigDict:
  """Inception v3's RMSProp recipe, which the MobileNets reuse: rate 0.045,
  decay 0.9, momentum 0.9, epsilon 1.0, L2 4e-5 on the weights only, the
  rate times `decay_factor` every `decay_every_epochs`."""
  c.optimizer.name = "rmsprop"
  c.optimizer.learning_rate = 0.045
  c.optimizer.rmsprop_decay = 0.9
  c.optimizer.epsilon = 1.0
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 4e-5
  c.optimizer.decay_bias_and_bn = False
  c.schedule.name = "exponential"
  c.schedule.decay_factor = decay_factor
  c.schedule.decay_every_epochs = decay_every_epochs
  return c


def sgd_steps(c: ml_collections.ConfigDict, learning_rate: float,
              weight_decay: float, boundaries: tuple, unit: str = "epochs",
              momentum: float = 0.9) -> ml_collections.ConfigDict:
  """SGD with momentum, L2 weight decay and the rate divided by 10 at each
  boundary: the recipe of most papers here."""
  c.optimizer.name = "sgd"
  c.optimizer.learning_rate = learning_rate
  c.optimizer.momentum = momentum
  c.optimizer.weight_decay = weight_decay
  c.schedule.name = "piecewise"
  c.schedule.boundaries = tuple(boundaries)
  c.schedule.boundaries_unit = unit
  c.schedule.decay_factor = 0.1
  return c
