"""Normalization and augmentation of image batches, in JAX: what every train step and BatchNorm re-estimation
applies to raw images. No dataset reading here (no TFDS)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from aws_jax.datasets import AUGMENTATIONS
from aws_jax.errors import UserError

_CROP_PADDING = 4
_CROP_RATIO = (3 / 4, 4 / 3)  # random resized crops: torchvision's aspect ratios and number of tries
_CROP_TRIES = 10
_TINY_IMAGENET_CROP_SCALE = (0.5, 1.0)


def normalize(images, mean, std) -> jax.Array:
  """(images - mean) / std in float32, per channel (the last axis)."""
  return (jnp.asarray(images, jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


@functools.partial(jax.jit, static_argnames='kind')
def augment(key, images, kind: str) -> jax.Array:
  """Augments a batch (N, H, W, C) with its own randomness per example; `kind` is one of `AUGMENTATIONS`.

  'crop_flip': a random H x W crop of the image zero-padded by 4 pixels, then a horizontal flip with probability 1/2.
  'resized_crop_flip': a random box of 1/2 to all of the image's area and aspect ratio 3/4 to 4/3 (torchvision's
  RandomResizedCrop draw), resized bilinearly to H x W, then the flip; it returns float32.
  Jitted, with `kind` static.
  """
  if kind == 'none':
    return jnp.asarray(images)
  if kind == 'crop_flip':
    return jax.vmap(_crop_flip)(jax.random.split(key, images.shape[0]), images)
  if kind == 'resized_crop_flip':
    return jax.vmap(_resized_crop_flip)(jax.random.split(key, images.shape[0]), images)
  raise UserError(f'Unknown augmentation {kind!r}; choose one of: {", ".join(AUGMENTATIONS)}.')


def _crop_flip(key, image) -> jax.Array:
  """One example of 'crop_flip'."""
  crop_key, flip_key = jax.random.split(key)
  height, width, channels = image.shape
  padded = jnp.pad(image, ((_CROP_PADDING, _CROP_PADDING), (_CROP_PADDING, _CROP_PADDING), (0, 0)))
  top, left = jax.random.randint(crop_key, (2,), 0, 2 * _CROP_PADDING + 1)
  crop = jax.lax.dynamic_slice(padded, (top, left, 0), (height, width, channels))
  return jnp.where(jax.random.bernoulli(flip_key), crop[:, ::-1], crop)


def _resized_crop_flip(key, image) -> jax.Array:
  """One example of 'resized_crop_flip'."""
  height, width, _ = image.shape
  uniforms = jax.random.uniform(key, (2 * _CROP_TRIES + 3,))  # one draw compiles much faster than several
  top, left, box_height, box_width = _crop_box(uniforms[:-1], height, width)
  crop = jnp.einsum('oi,ijc,pj->opc', _resize_weights(top, box_height, height),
                    jnp.asarray(image, jnp.float32), _resize_weights(left, box_width, width),
                    precision=jax.lax.Precision.HIGHEST)
  return jnp.where(uniforms[-1] < 0.5, crop[:, ::-1], crop)


def _resize_weights(start, length, size: int) -> jax.Array:
  """(size, size) bilinear weights resampling pixels [start, start + length) of `size` to `size` pixels.

  Sample points stay inside the box, as when PIL resizes a crop (torchvision's RandomResizedCrop on PIL images).
  """
  points = start + (jnp.arange(size) + 0.5) * length / size - 0.5
  points = jnp.clip(points, start, start + length - 1)
  return jnp.maximum(0, 1 - jnp.abs(points[:, None] - jnp.arange(size)))


def _crop_box(uniforms, height: int, width: int):
  """(top, left, height, width) as floats: `random_box` with `_TINY_IMAGENET_CROP_SCALE`, vectorised.

  `uniforms`: 22 draws from U[0, 1), 10 areas, 10 aspect ratios, the top and the left.
  """
  low, high = _TINY_IMAGENET_CROP_SCALE
  area = height * width * (low + (high - low) * uniforms[:_CROP_TRIES])
  log_low, log_high = math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])
  ratio = jnp.exp(log_low + (log_high - log_low) * uniforms[_CROP_TRIES:2 * _CROP_TRIES])
  box_width, box_height = jnp.round(jnp.sqrt(area * ratio)), jnp.round(jnp.sqrt(area / ratio))
  fits = (box_width > 0) & (box_width <= width) & (box_height > 0) & (box_height <= height)
  first = jnp.argmax(fits)
  found = fits[first]
  central_height, central_width = central_box(height, width)
  box_height = jnp.where(found, box_height[first], central_height)
  box_width = jnp.where(found, box_width[first], central_width)
  top = jnp.where(found, jnp.floor(uniforms[-2] * (height - box_height + 1)), (height - box_height) // 2)
  left = jnp.where(found, jnp.floor(uniforms[-1] * (width - box_width + 1)), (width - box_width) // 2)
  return top, left, box_height, box_width


def random_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float]):
  """(top, left, height, width) of a random crop, drawn as torchvision's RandomResizedCrop draws it.

  Up to 10 tries of an area fraction in `scale` and a log-uniform aspect ratio in (3/4, 4/3); the first box that
  fits is placed uniformly; if none fits, the central `central_box`.
  """
  for _ in range(_CROP_TRIES):
    area = height * width * rng.uniform(*scale)
    ratio = math.exp(rng.uniform(math.log(_CROP_RATIO[0]), math.log(_CROP_RATIO[1])))
    box_width, box_height = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
    if 0 < box_width <= width and 0 < box_height <= height:
      return (int(rng.integers(0, height - box_height + 1)), int(rng.integers(0, width - box_width + 1)),
              box_height, box_width)
  box_height, box_width = central_box(height, width)
  return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


def central_box(height: int, width: int) -> tuple[int, int]:
  """torchvision's fallback crop size: the whole image, its aspect ratio clamped to (3/4, 4/3)."""
  if width / height < _CROP_RATIO[0]:
    return round(width / _CROP_RATIO[0]), width
  if width / height > _CROP_RATIO[1]:
    return height, round(height * _CROP_RATIO[1])
  return height, width
