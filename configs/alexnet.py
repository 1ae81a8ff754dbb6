"""AlexNet on ImageNet, Krizhevsky, Sutskever and Hinton 2012 (Table 2: one
CNN, 40.7% top-1 / 18.2% top-5 error on the ILSVRC-2012 validation set).

Recipe (Section 5): batch 128, SGD momentum 0.9, weight decay 5e-4, learning
rate 0.01 divided by 10 three times, about 90 epochs; dropout 0.5 in fc6 and
fc7; random 227x227 crops of the central square rescaled to 256x256, flips,
and PCA colour noise (std 0.1). The paper divided the rate when the
validation error stopped improving; we fix the divisions at epochs 30, 60
and 80. (The paper says 224 crops; 227 is what its layer sizes need.)

  python main.py --config=configs/alexnet.py --workdir=runs/alexnet \
      --config.dataset.data_dir=/path/to/tensorflow_datasets
  ... --config.model.groups=1          # one column: every map connected
  ... --config.model.weight_init=paper # N(0, 0.01) weights, unit biases
"""
import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.name = "alexnet"
  default.imagenet(c, image_size=227)
  c.batch_size = 128
  c.dataset.train_crop = "square"
  c.dataset.scale_range = (256, 256)
  c.dataset.pca_noise = 0.1
  c.num_epochs = 90.0
  default.sgd_steps(c, 0.01, 5e-4, (30, 60, 80))
  return c
