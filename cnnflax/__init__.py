"""cnnflax: classic convolutional networks in JAX/Flax, faithful to their papers."""

__version__ = "0.1.0"
