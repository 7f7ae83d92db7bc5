"""Image classification datasets behind one interface, `Source` (what each dataset is: the registry in
aws_jax/datasets.py; its normalization and augmentation: aws_jax/augment.py).

A source gives one epoch's training batches for one seed or several at once, the test split's batches, and says
whether it is held in memory. `Dataset` holds both splits in memory as numpy arrays (read by `files`); ImageNet is too
large for memory: a `StreamedDataset` streams it (`streamed`). `load` picks by the dataset's registered facts.
"""
import dataclasses
import os
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np

from aws_jax import datasets, sharding, train
from aws_jax.data import files
from aws_jax.datasets import FACTS
from aws_jax.errors import UserError

if TYPE_CHECKING:
  from aws_jax.data.streamed import StreamedDataset

# normalization='authors': the reference's constants (CIFAR-10's for CIFAR-100, ImageNet's for Tiny-ImageNet).
AUTHORS_NORMALIZATION = {name: files.pixel_units(facts.constants) for name, facts in FACTS.items()
                         if facts.authors_constants}


class Source(Protocol):
  """What a run reads a dataset through (big_vision's `DataSource` is the model).

  A train step reads (images, labels, indices) and an evaluation step (images, labels, indices, valid): it trains on,
  or evaluates, examples `indices` of `images` and `labels`. `resident(split)` are the leading ones, placed on every
  device once for the whole run (an in-memory source's whole split; none for a streamed one); the batches are the
  rest, as this host's rows of each global batch (`process` = (index, count): rows [index, index + 1) × B / count).
  """
  name: str
  num_classes: int
  mean: np.ndarray    # per channel, in pixel units
  std: np.ndarray
  augmentation: str   # what the train step does to a batch (aws_jax/augment.py)
  in_memory: bool     # the analyses that re-estimate BatchNorm statistics (error barriers) need the data in memory

  @property
  def num_train(self) -> int: ...

  @property
  def num_test(self) -> int: ...

  @property
  def image_shape(self) -> tuple[int, ...]: ...

  def resident(self, split: str) -> tuple[np.ndarray, ...]:
    """The leading step inputs of `split` ('train' or 'test') that stay on the devices."""

  def train_batches(self, batch_size: int, *, seeds: Sequence[int], phase: int, epoch: int, start: int = 0,
                    workers: int = 0, process: tuple[int, int] = (0, 1)) -> Iterator[tuple[np.ndarray, ...]]:
    """The rest of each train step's inputs over one epoch, from step `start`: a function of (seed, phase, epoch)
    alone, the last incomplete batch dropped. Several `seeds`: their batches stacked on a leading axis, each seed in
    its own order. `workers`: decoding processes (0: decode in this process)."""

  def test_batches(self, batch_size: int, *, workers: int = 0, process: tuple[int, int] = (0, 1)
                   ) -> Iterator[tuple[np.ndarray, ...]]:
    """The rest of each evaluation step's inputs over the test split in order; the last batch is padded with rows
    whose `valid` is 0."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A `Source` held in memory: raw (un-normalised) train and test splits, with the train set's per-channel
  statistics. The splits stay on the devices (`resident`); a batch is the indices of its examples."""
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: np.ndarray
  std: np.ndarray
  augmentation: str
  in_memory = True

  @property
  def num_train(self) -> int:
    return self.train_labels.shape[0]

  @property
  def num_test(self) -> int:
    return self.test_labels.shape[0]

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.train_images.shape[1:]

  def resident(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    return (self.train_images, self.train_labels) if split == 'train' else (self.test_images, self.test_labels)

  def train_batches(self, batch_size: int, *, seeds: Sequence[int], phase: int, epoch: int, start: int = 0,
                    workers: int = 0, process: tuple[int, int] = (0, 1)) -> Iterator[tuple[np.ndarray]]:
    """(indices int32 (B,), or (S, B) for S seeds,) of each step: `train.epoch_order` of each seed."""
    del workers  # nothing to decode
    orders = np.stack([train.epoch_order(seed, phase, epoch, self.num_train, batch_size) for seed in seeds], axis=1)
    for indices in orders[start:]:
      yield (sharding.host_rows(indices if len(seeds) > 1 else indices[0], process),)

  def test_batches(self, batch_size: int, *, workers: int = 0, process: tuple[int, int] = (0, 1)
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices int32, valid float32) of each test batch; the padding rows index example 0."""
    del workers
    for indices, valid in train.eval_batches(self.num_test, batch_size):
      yield sharding.host_rows(indices, process), sharding.host_rows(valid, process)


def first_examples(dataset: Source, count: int) -> Dataset:
  """`dataset` trained on its first `count` training examples only (statistics and test split unchanged)."""
  if not dataset.in_memory:
    raise UserError(f'--config.train_examples needs an in-memory dataset; {dataset.name} streams from disk')
  if count > dataset.num_train:
    raise UserError(f'--config.train_examples={count} exceeds the {dataset.num_train} training examples of '
                    f'{dataset.name}')
  return dataclasses.replace(dataset, train_images=dataset.train_images[:count],
                             train_labels=dataset.train_labels[:count])


def load(name: str, data_dir: str | os.PathLike | None = None, download: bool = False,
         normalization: str = 'computed') -> 'Dataset | StreamedDataset':
  """Loads the dataset `name` (`datasets.facts`): a registered one, or a user's 'folder:PATH' or 'npz:PATH'; one
  that streams as a `StreamedDataset`, the others as a `Dataset`.

  `data_dir` is the TFDS data directory (default: as TFDS resolves it); for 'tiny_imagenet', the folder holding
  tiny-imagenet-200/, or that folder itself (default: $TINY_IMAGENET_DIR, else TFDS's data directory).
  `normalization` 'computed': the training set's per-channel mean and std; 'authors': the reference's constants
  where it has them (`AUTHORS_NORMALIZATION`), else computed. A streamed dataset always has its registered constants.
  """
  facts = datasets.facts(name)
  if facts.streamed:
    from aws_jax.data import streamed  # pylint: disable=import-outside-toplevel  # grain: only where a dataset streams
    return streamed.load_imagenet(os.fspath(data_dir) if data_dir else files.default_tfds_data_dir())
  arrays = files.LOADERS[facts.files](name, data_dir, download)
  if normalization == 'authors' and name in AUTHORS_NORMALIZATION:
    arrays['mean'], arrays['std'] = AUTHORS_NORMALIZATION[name]
  elif 'mean' not in arrays:
    arrays['mean'], arrays['std'] = files.channel_statistics(arrays['train_images'])
  return Dataset(name=name, num_classes=facts.num_classes, augmentation=facts.augmentation, **arrays)
