"""ImageNet, too large for memory: a `data.Source` that streams it from TFDS's prepared array_record files, through
grain worker processes that decode and augment it (random resized crop and flip to train, resize and centre crop to
test)."""
import dataclasses
import functools
import io
from typing import Any, Iterator, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from PIL import Image

from aws_jax import augment, sharding
from aws_jax.data.files import is_prepared, pixel_units, tfds_splits, version_dir
from aws_jax.datasets import FACTS
from aws_jax.errors import UserError

_IMAGENET_CROP_SCALE = (0.08, 1.0)
_IMAGENET_SIZE = 224
_IMAGENET_RESIZE = 256  # test: shorter side resized to this, then the central _IMAGENET_SIZE crop


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
  """A `Source` too large for memory, read batch by batch from TFDS's prepared array_record files: each batch
  carries its images, and its indices are its own rows.

  Worker processes decode and augment it, so `augmentation` is 'none'; `mean` and `std` are in pixel units.
  """
  name: str
  train_source: Any  # TFDS data sources yielding {'image': JPEG bytes, 'label': int}
  test_source: Any
  num_classes: int
  mean: np.ndarray
  std: np.ndarray
  image_shape: tuple[int, int, int]
  augmentation: str = 'none'
  in_memory = False

  @property
  def num_train(self) -> int:
    return len(self.train_source)

  @property
  def num_test(self) -> int:
    return len(self.test_source)

  def resident(self, split: str) -> tuple[()]:
    del split
    return ()

  def train_batches(self, batch_size: int, *, seeds: Sequence[int], phase: int, epoch: int, start: int = 0,
                    workers: int = 0, process: tuple[int, int] = (0, 1)) -> Iterator[tuple[np.ndarray, ...]]:
    """(images uint8 (B, 224, 224, 3), labels int32 (B,), indices int32 (B,)) of each step, stacked (S, B, ...) for
    S seeds.

    The order and the augmentation (random resized crop of scale (0.08, 1) to 224 px, horizontal flip with
    probability 1/2) are functions of (seed, phase, epoch) alone, whatever the number of `workers`; batches before
    `start` are not decoded.
    """
    epochs = [self._epoch(batch_size, seed, phase, epoch, start, workers, process) for seed in seeds]
    for batches in zip(*epochs):
      yield batches[0] if len(seeds) == 1 else tuple(np.stack(arrays) for arrays in zip(*batches))

  def _epoch(self, batch_size: int, seed: int, phase: int, epoch: int, start: int, workers: int,
             process: tuple[int, int]) -> Iterator[tuple[np.ndarray, ...]]:
    order_seed, augment_seed = (int(s) for s in np.random.SeedSequence((seed, phase, epoch)).generate_state(2))
    examples = (grain.MapDataset.source(self.train_source).shuffle(seed=order_seed)
                .random_map(_imagenet_train_example, seed=augment_seed))
    rows = sharding.host_rows(np.arange(batch_size, dtype=np.int32), process)
    for batch in _iterate(_host_batches(examples, batch_size, process)[start:], workers):
      yield batch['image'], batch['label'], rows

  def test_batches(self, batch_size: int, *, workers: int = 0, process: tuple[int, int] = (0, 1)
                   ) -> Iterator[tuple[np.ndarray, ...]]:
    """(images uint8, labels int32, indices int32, valid float32) of each test batch.

    Each image is resized to 256 px on its shorter side and centre-cropped to 224 px; padding rows are zeros.
    """
    padded = -(-self.num_test // batch_size) * batch_size
    examples = grain.MapDataset.range(padded).map(functools.partial(_imagenet_test_row, source=self.test_source))
    rows = sharding.host_rows(np.arange(batch_size, dtype=np.int32), process)
    for batch in _iterate(_host_batches(examples, batch_size, process), workers):
      yield batch['image'], batch['label'], rows, batch['valid']


def load_imagenet(data_dir: str) -> StreamedDataset:
  """ImageNet's train and validation splits as TFDS data sources of undecoded JPEGs."""
  if not is_prepared('imagenet2012', data_dir):
    raise UserError(
        f'Dataset \'imagenet2012\' is not prepared in {data_dir} (no array_record files in '
        f'{version_dir("imagenet2012", data_dir)}) and cannot be downloaded automatically: register at '
        f'https://image-net.org/download-images, download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into '
        f'a folder MANUAL_DIR, then run `pip install tensorflow tensorflow-datasets && tfds build imagenet2012 '
        f'--data_dir={data_dir} --manual_dir=MANUAL_DIR --file_format=array_record`.')
  train, test = tfds.data_source(
      'imagenet2012', split=tfds_splits('imagenet2012'), data_dir=data_dir, download=False,
      builder_kwargs={'file_format': 'array_record'}, decoders={'image': tfds.decode.SkipDecoding()})
  facts = FACTS['imagenet2012']
  mean, std = pixel_units(facts.constants)
  return StreamedDataset(name='imagenet2012', train_source=train, test_source=test, num_classes=facts.num_classes,
                         mean=mean, std=std, image_shape=facts.image_shape)


def _imagenet_train_example(example: dict, rng: np.random.Generator) -> dict:
  """Decodes; a random resized crop of scale (0.08, 1) to 224 px (bilinear), a horizontal flip with probability 1/2."""
  image = _decode_jpeg(example['image'])
  top, left, height, width = augment.random_box(rng, image.height, image.width, _IMAGENET_CROP_SCALE)
  image = image.crop((left, top, left + width, top + height)).resize((_IMAGENET_SIZE, _IMAGENET_SIZE),
                                                                    Image.Resampling.BILINEAR)
  if rng.random() < 0.5:
    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return {'image': np.asarray(image), 'label': np.int32(example['label'])}


def _imagenet_test_example(example: dict) -> dict:
  """Decodes; the shorter side resized to 256 px (bilinear), then the central 224 x 224 crop (as torchvision)."""
  image = _decode_jpeg(example['image'])
  short, long = sorted((image.width, image.height))
  resized_long = int(_IMAGENET_RESIZE * long / short)
  size = (_IMAGENET_RESIZE, resized_long) if image.width == short else (resized_long, _IMAGENET_RESIZE)
  image = image.resize(size, Image.Resampling.BILINEAR)
  top = int(round((image.height - _IMAGENET_SIZE) / 2))
  left = int(round((image.width - _IMAGENET_SIZE) / 2))
  image = image.crop((left, top, left + _IMAGENET_SIZE, top + _IMAGENET_SIZE))
  return {'image': np.asarray(image), 'label': np.int32(example['label'])}


def _imagenet_test_row(index: int, source) -> dict:
  """Example `index` of `source` as `_imagenet_test_example` makes it, valid 1; past the end, zeros, valid 0."""
  if index < len(source):
    return {**_imagenet_test_example(source[index]), 'valid': np.float32(1)}
  return {'image': np.zeros((_IMAGENET_SIZE, _IMAGENET_SIZE, 3), np.uint8), 'label': np.int32(0),
          'valid': np.float32(0)}


def _host_batches(examples: grain.MapDataset, batch_size: int, process: tuple[int, int]) -> grain.MapDataset:
  """The rows of each complete global batch of `examples` that host `process` = (index, count) feeds."""
  index, count = process
  host_batches = examples.batch(sharding.host_share(batch_size, count), drop_remainder=True)
  return host_batches[index::count][:len(examples) // batch_size]


def _decode_jpeg(data: bytes) -> Image.Image:
  return Image.open(io.BytesIO(data)).convert('RGB')


def _iterate(dataset: grain.MapDataset, workers: int) -> Iterator[dict]:
  """The elements of `dataset` in order, computed in `workers` processes (0: here), as plain numpy arrays."""
  dataset = dataset.to_iter_dataset()
  if workers:
    if not flags.FLAGS.is_parsed():  # grain's workers read an absl flag: outside an absl app, take the defaults
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  iterator = iter(dataset)
  try:
    for batch in iterator:
      yield {key: np.array(value) for key, value in batch.items()}  # copied out of grain's shared memory
  finally:
    iterator.close()
