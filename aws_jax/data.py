"""Image classification datasets held in memory as numpy arrays, with normalization and augmentation in JAX.

`digits` ships with scikit-learn. The others are read from data prepared by TFDS in the array_record format (no
TensorFlow needed to read it); Fashion-MNIST can also come from Debian's `dataset-fashion-mnist` package. A dataset
that is not there fails at once with a `UserError` that says how to prepare it: TFDS is only allowed to download when
asked to.
"""
import dataclasses
import gzip
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from sklearn import datasets as sklearn_datasets

from aws_jax.errors import UserError

DATASETS = ('digits', 'fashion_mnist', 'cifar10', 'cifar100')
AUGMENTATIONS = ('none', 'crop_flip')

_NUM_CLASSES = {'digits': 10, 'fashion_mnist': 10, 'cifar10': 10, 'cifar100': 100}
_AUGMENTATION = {'digits': 'none', 'fashion_mnist': 'none', 'cifar10': 'crop_flip', 'cifar100': 'crop_flip'}
_DIGITS_TRAIN_SIZE = 1437
_FASHION_MNIST_IDX_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')
_CROP_PADDING = 4


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Raw (un-normalised) train and test splits, with the train set's per-channel statistics."""
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: np.ndarray
  std: np.ndarray
  augmentation: str


def load(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Dataset:
  """Loads a dataset of `DATASETS`; `data_dir` is the TFDS data directory (default: as TFDS resolves it)."""
  if name not in DATASETS:
    raise UserError(f'Unknown dataset {name!r}; choose one of: {", ".join(DATASETS)}.')
  if name == 'digits':
    train, test = _load_digits()
  else:
    data_dir = os.fspath(data_dir) if data_dir else _default_tfds_data_dir()
    if _is_prepared(name, data_dir):
      train, test = _load_tfds(name, data_dir, download=False)
    elif name == 'fashion_mnist' and _FASHION_MNIST_IDX_DIR.is_dir():
      train, test = _load_fashion_mnist_idx(_FASHION_MNIST_IDX_DIR)
    elif download:
      train, test = _load_tfds(name, data_dir, download=True)
    else:
      raise UserError(_missing_message(name, data_dir))
  (train_images, train_labels), (test_images, test_labels) = train, test
  return Dataset(
      name=name,
      train_images=train_images,
      train_labels=train_labels,
      test_images=test_images,
      test_labels=test_labels,
      num_classes=_NUM_CLASSES[name],
      mean=train_images.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32),
      std=train_images.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32),
      augmentation=_AUGMENTATION[name])


def normalize(images, mean, std) -> jax.Array:
  """(images - mean) / std in float32, per channel (the last axis)."""
  return (jnp.asarray(images, jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def augment(key, images, kind: str) -> jax.Array:
  """Augments a batch (N, H, W, C) with its own randomness per example; `kind` is one of `AUGMENTATIONS`.

  'crop_flip': a random H x W crop of the image zero-padded by 4 pixels, then a horizontal flip with probability 1/2.
  Jit-friendly with `kind` static.
  """
  if kind == 'none':
    return jnp.asarray(images)
  if kind == 'crop_flip':
    return jax.vmap(_crop_flip)(jax.random.split(key, images.shape[0]), images)
  raise UserError(f'Unknown augmentation {kind!r}; choose one of: {", ".join(AUGMENTATIONS)}.')


def _crop_flip(key, image) -> jax.Array:
  """One example of 'crop_flip'."""
  crop_key, flip_key = jax.random.split(key)
  height, width, channels = image.shape
  padded = jnp.pad(image, ((_CROP_PADDING, _CROP_PADDING), (_CROP_PADDING, _CROP_PADDING), (0, 0)))
  top, left = jax.random.randint(crop_key, (2,), 0, 2 * _CROP_PADDING + 1)
  crop = jax.lax.dynamic_slice(padded, (top, left, 0), (height, width, channels))
  return jnp.where(jax.random.bernoulli(flip_key), crop[:, ::-1], crop)


def _load_digits():
  """scikit-learn's 8x8 digits, float32 in [0, 16], split 1437 / 360 by a fixed permutation."""
  digits = sklearn_datasets.load_digits()
  images = digits.images.astype(np.float32)[..., None]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  train, test = order[:_DIGITS_TRAIN_SIZE], order[_DIGITS_TRAIN_SIZE:]
  return (images[train], labels[train]), (images[test], labels[test])


def _default_tfds_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR', os.path.join(os.path.expanduser('~'), 'tensorflow_datasets'))


def _version_dir(name: str, data_dir: str) -> pathlib.Path:
  """Where TFDS keeps the prepared current version of `name`."""
  return pathlib.Path(data_dir) / name / str(tfds.builder_cls(name).VERSION)


def _is_prepared(name: str, data_dir: str) -> bool:
  """Whether `data_dir` holds `name` in the array_record format; checked by hand, so TFDS never goes to the network."""
  return any(_version_dir(name, data_dir).glob(f'{name}-train.array_record*'))


def _missing_message(name: str, data_dir: str) -> str:
  message = (
      f'Dataset {name!r} is not prepared in {data_dir} (no array_record files in {_version_dir(name, data_dir)}). '
      f'Prepare it with `pip install tensorflow tensorflow-datasets && '
      f'tfds build {name} --data_dir={data_dir} --file_format=array_record`, or pass --config.download=True')
  if name == 'fashion_mnist':
    message += f', or `apt-get install dataset-fashion-mnist` (read from {_FASHION_MNIST_IDX_DIR})'
  return message + '.'


def _load_tfds(name: str, data_dir: str, download: bool):
  """The train and test splits through `tfds.data_source`, as (images, labels) numpy pairs."""
  sources = tfds.data_source(
      name, split=('train', 'test'), data_dir=data_dir, download=download,
      builder_kwargs={'file_format': 'array_record'})
  return tuple(_to_arrays(source) for source in sources)


def _to_arrays(source):
  """All examples of a TFDS data source: images stacked as they are, labels as int32."""
  examples = source.__getitems__(range(len(source)))
  images = np.stack([example['image'] for example in examples])
  labels = np.array([example['label'] for example in examples], np.int32)
  return images, labels


def _load_fashion_mnist_idx(directory: pathlib.Path):
  """Fashion-MNIST from its gzipped IDX files (Debian's layout): images (N, 28, 28, 1) uint8."""
  return tuple(
      (_read_idx(directory / f'{prefix}-images-idx3-ubyte.gz')[..., None],
       _read_idx(directory / f'{prefix}-labels-idx1-ubyte.gz').astype(np.int32))
      for prefix in ('train', 't10k'))


def _read_idx(path: pathlib.Path) -> np.ndarray:
  """A gzipped IDX file of unsigned bytes: magic 0x0000 0x08 <ndim>, ndim big-endian uint32 sizes, the data."""
  with gzip.open(path, 'rb') as f:
    data = f.read()
  if data[:3] != b'\x00\x00\x08':
    raise UserError(f'{path} is not an IDX file of unsigned bytes.')
  ndim = data[3]
  shape = np.frombuffer(data, '>u4', count=ndim, offset=4)
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()
