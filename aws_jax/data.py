"""Image classification datasets behind one interface, `Source` (what each dataset is: the registry in
aws_jax/datasets.py; its normalization and augmentation: aws_jax/augment.py).

A source gives one epoch's training batches for one seed or several at once, the test split's batches, and says
whether it is held in memory. `Dataset` holds both splits in memory as numpy arrays: `digits` ships with scikit-learn;
Tiny-ImageNet is decoded from its official folder layout (and cached as a .npz next to it); a user's folder of images
in class sub-folders (`folder:PATH`) or pair of .npz files (`npz:PATH`) is read as it is; the others come from data
prepared by TFDS in the array_record format (no TensorFlow needed to read it); Fashion-MNIST can also come from
Debian's `dataset-fashion-mnist` package. ImageNet is too large for memory: a `StreamedDataset` reads it from TFDS's
prepared array_record files through grain worker processes that decode and augment it. A dataset that is not there
fails at once with a `UserError` that says how to get it: nothing is downloaded unless asked.
"""
import dataclasses
import functools
import gzip
import importlib.util
import io
import os
import pathlib
import urllib.request
import zipfile
from typing import Any, Iterator, Protocol, Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from PIL import Image

from aws_jax import augment, datasets, train
from aws_jax.datasets import FACTS
from aws_jax.errors import UserError

_FASHION_MNIST_IDX_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')
_TINY_IMAGENET_URL = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'
_TINY_IMAGENET_FOLDER = 'tiny-imagenet-200'
_TINY_IMAGENET_CACHE = 'aws_jax_arrays.npz'
_IMAGENET_CROP_SCALE = (0.08, 1.0)
_IMAGENET_SIZE = 224
_IMAGENET_RESIZE = 256  # test: shorter side resized to this, then the central _IMAGENET_SIZE crop


def _pixel_units(constants: tuple) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) in [0, 1] as float32 arrays in pixel units."""
  return tuple(np.array(values, np.float32) * 255 for values in constants)


# normalization='authors': the reference's constants (CIFAR-10's for CIFAR-100, ImageNet's for Tiny-ImageNet).
AUTHORS_NORMALIZATION = {name: _pixel_units(facts.constants) for name, facts in FACTS.items()
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
      yield (_host_rows(indices if len(seeds) > 1 else indices[0], process),)

  def test_batches(self, batch_size: int, *, workers: int = 0, process: tuple[int, int] = (0, 1)
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices int32, valid float32) of each test batch; the padding rows index example 0."""
    del workers
    for indices, valid in train.eval_batches(self.num_test, batch_size):
      yield _host_rows(indices, process), _host_rows(valid, process)


def first_examples(dataset: Source, count: int) -> Dataset:
  """`dataset` trained on its first `count` training examples only (statistics and test split unchanged)."""
  if not dataset.in_memory:
    raise UserError(f'--config.train_examples needs an in-memory dataset; {dataset.name} streams from disk')
  if count > dataset.num_train:
    raise UserError(f'--config.train_examples={count} exceeds the {dataset.num_train} training examples of '
                    f'{dataset.name}')
  return dataclasses.replace(dataset, train_images=dataset.train_images[:count],
                             train_labels=dataset.train_labels[:count])


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
    rows = _host_rows(np.arange(batch_size, dtype=np.int32), process)
    for batch in _iterate(_host_batches(examples, batch_size, process)[start:], workers):
      yield batch['image'], batch['label'], rows

  def test_batches(self, batch_size: int, *, workers: int = 0, process: tuple[int, int] = (0, 1)
                   ) -> Iterator[tuple[np.ndarray, ...]]:
    """(images uint8, labels int32, indices int32, valid float32) of each test batch.

    Each image is resized to 256 px on its shorter side and centre-cropped to 224 px; padding rows are zeros.
    """
    padded = -(-self.num_test // batch_size) * batch_size
    examples = grain.MapDataset.range(padded).map(functools.partial(_imagenet_test_row, source=self.test_source))
    rows = _host_rows(np.arange(batch_size, dtype=np.int32), process)
    for batch in _iterate(_host_batches(examples, batch_size, process), workers):
      yield batch['image'], batch['label'], rows, batch['valid']


def load(name: str, data_dir: str | os.PathLike | None = None, download: bool = False,
         normalization: str = 'computed') -> Dataset | StreamedDataset:
  """Loads the dataset `name` (`datasets.facts`): a registered one, or a user's 'folder:PATH' or 'npz:PATH'; one
  that streams as a `StreamedDataset`, the others as a `Dataset`.

  `data_dir` is the TFDS data directory (default: as TFDS resolves it); for 'tiny_imagenet', the folder holding
  tiny-imagenet-200/, or that folder itself (default: $TINY_IMAGENET_DIR, else TFDS's data directory).
  `normalization` 'computed': the training set's per-channel mean and std; 'authors': the reference's constants
  where it has them (`AUTHORS_NORMALIZATION`), else computed. A streamed dataset always has its registered constants.
  """
  facts = datasets.facts(name)
  if facts.streamed:
    return _load_imagenet(os.fspath(data_dir) if data_dir else _default_tfds_data_dir())
  arrays = _LOADERS[facts.files](name, data_dir, download)
  if normalization == 'authors' and name in AUTHORS_NORMALIZATION:
    arrays['mean'], arrays['std'] = AUTHORS_NORMALIZATION[name]
  elif 'mean' not in arrays:
    arrays['mean'], arrays['std'] = _channel_statistics(arrays['train_images'])
  return Dataset(name=name, num_classes=facts.num_classes, augmentation=facts.augmentation, **arrays)


def _load_tfds_arrays(name: str, data_dir, download: bool) -> dict:
  """A dataset prepared by TFDS in `data_dir` (Fashion-MNIST: or Debian's IDX files), as arrays."""
  data_dir = os.fspath(data_dir) if data_dir else _default_tfds_data_dir()
  if _is_prepared(name, data_dir):
    train, test = _load_tfds(name, data_dir, download=False)
  elif name == 'fashion_mnist' and _FASHION_MNIST_IDX_DIR.is_dir():
    train, test = _load_fashion_mnist_idx(_FASHION_MNIST_IDX_DIR)
  elif download:
    train, test = _load_tfds(name, data_dir, download=True)
  else:
    raise UserError(_missing_message(name, data_dir))
  return _arrays(train, test)


def _arrays(train: tuple, test: tuple) -> dict:
  """`Dataset`'s array fields from (images, labels) pairs."""
  (train_images, train_labels), (test_images, test_labels) = train, test
  return {'train_images': train_images, 'train_labels': train_labels, 'test_images': test_images,
          'test_labels': test_labels}


def _channel_statistics(images: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation (float32), accumulated in float64 a chunk of images at a time."""
  channels = images.shape[-1]
  total, squares = np.zeros(channels), np.zeros(channels)
  for start in range(0, images.shape[0], chunk):
    pixels = images[start:start + chunk].reshape(-1, channels).astype(np.float64)
    total += pixels.sum(axis=0)
    squares += np.einsum('ij,ij->j', pixels, pixels)
  count = images.size // channels
  mean = total / count
  return mean.astype(np.float32), np.sqrt(np.maximum(squares / count - mean**2, 0)).astype(np.float32)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits as (1797, 64) pixels and labels. Read from the CSV scikit-learn ships, found without
  importing it (its import takes 2 s, the file 10 ms); `sklearn.datasets.load_digits` where the file is not there."""
  spec = importlib.util.find_spec('sklearn')
  path = os.path.join(spec.submodule_search_locations[0], 'datasets', 'data', 'digits.csv.gz') if spec else ''
  if os.path.isfile(path):
    rows = np.loadtxt(path, delimiter=',', dtype=np.float32)
    return rows[:, :-1], rows[:, -1]
  from sklearn import datasets as sklearn_datasets  # pylint: disable=import-outside-toplevel
  digits = sklearn_datasets.load_digits()
  return digits.data, digits.target


def _load_digits(name: str, data_dir, download: bool) -> dict:
  """scikit-learn's 8x8 digits, float32 in [0, 16], split 1437 / 360 by a fixed permutation."""
  del data_dir, download
  pixels, targets = _digits_arrays()
  images = pixels.astype(np.float32).reshape(-1, 8, 8, 1)
  labels = targets.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(labels))
  train, test = order[:FACTS[name].num_train], order[FACTS[name].num_train:]
  return _arrays((images[train], labels[train]), (images[test], labels[test]))


def _default_tfds_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR', os.path.join(os.path.expanduser('~'), 'tensorflow_datasets'))


def _version_dir(name: str, data_dir: str) -> pathlib.Path:
  """Where TFDS keeps the prepared current version of `name`."""
  return pathlib.Path(data_dir) / name / str(tfds.builder_cls(name).VERSION)


def _splits(name: str) -> tuple[str, str]:
  """The TFDS splits trained and evaluated on."""
  return 'train', FACTS[name].test_split


def _is_prepared(name: str, data_dir: str) -> bool:
  """Whether `data_dir` holds `name` in the array_record format; checked by hand, so TFDS never goes to the network."""
  return all(any(_version_dir(name, data_dir).glob(f'{name}-{split}.array_record*')) for split in _splits(name))


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
      name, split=_splits(name), data_dir=data_dir, download=download,
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


def _tiny_imagenet_root(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """Where tiny-imagenet-200/ should be: in `data_dir` (default: $TINY_IMAGENET_DIR, else TFDS's), or `data_dir`."""
  directory = pathlib.Path(data_dir or os.environ.get('TINY_IMAGENET_DIR') or _default_tfds_data_dir())
  return directory if (directory / 'wnids.txt').is_file() else directory / _TINY_IMAGENET_FOLDER


def _load_tiny_imagenet(name: str, data_dir, download: bool) -> dict:
  """Tiny-ImageNet's train and val splits (uint8 (N, 64, 64, 3)) and statistics: the cache in its folder
  (`_tiny_imagenet_root`), else the decoded JPEGs."""
  del name
  root = _tiny_imagenet_root(data_dir)
  cache = root / _TINY_IMAGENET_CACHE
  if cache.is_file():
    with np.load(cache) as f:
      arrays = dict(f)
  else:
    if not (root / 'wnids.txt').is_file():
      if not download:
        raise UserError(
            f'Tiny-ImageNet is not in {root} (no wnids.txt there): download {_TINY_IMAGENET_URL} and unzip it in '
            f'{root.parent}, or pass --config.download=True; --config.data_dir or $TINY_IMAGENET_DIR name the '
            f'folder that holds {_TINY_IMAGENET_FOLDER}/.')
      _download_tiny_imagenet(root.parent)
    print(f'decoding Tiny-ImageNet in {root} (first load only: cached in {cache})', flush=True)
    arrays = _decode_tiny_imagenet(root)
    temporary = cache.with_name(cache.name + '.tmp')
    try:
      with open(temporary, 'wb') as f:
        np.savez(f, **arrays)
      os.replace(temporary, cache)
    except OSError as e:
      print(f'could not cache the decoded Tiny-ImageNet in {cache} ({e}); the next load decodes it again',
            flush=True)
  return arrays


def _download_tiny_imagenet(directory: pathlib.Path) -> None:
  """Downloads the official zip and unzips it in `directory`."""
  directory.mkdir(parents=True, exist_ok=True)
  archive = directory / 'tiny-imagenet-200.zip'
  print(f'downloading {_TINY_IMAGENET_URL} to {directory}', flush=True)
  try:
    urllib.request.urlretrieve(_TINY_IMAGENET_URL, archive)
  except OSError as e:
    raise UserError(f'could not download {_TINY_IMAGENET_URL} ({e}); download it by hand and unzip it in '
                    f'{directory}.') from e
  with zipfile.ZipFile(archive) as f:
    f.extractall(directory)
  archive.unlink()


def _decode_tiny_imagenet(root: pathlib.Path) -> dict:
  """`Dataset`'s arrays from train/<wnid>/images/*.JPEG and val/images/*.JPEG (labels in val/val_annotations.txt).

  Classes are numbered in the sorted order of wnids.txt (torchvision's ImageFolder order).
  """
  wnids = sorted((root / 'wnids.txt').read_text().split())
  label = {wnid: i for i, wnid in enumerate(wnids)}
  train = [(path, label[wnid]) for wnid in wnids for path in sorted((root / 'train' / wnid / 'images').glob('*.JPEG'))]
  rows = [line.split('\t') for line in (root / 'val' / 'val_annotations.txt').read_text().splitlines() if line]
  test = sorted((root / 'val' / 'images' / row[0], label[row[1]]) for row in rows)
  if {example_label for _, example_label in train} != set(range(len(wnids))) or not test:
    raise UserError(f'{root} is incomplete: some class of wnids.txt has no training image, or val/ has none; unzip '
                    f'{_TINY_IMAGENET_URL} there again.')
  arrays = _arrays(_read_images(train), _read_images(test))
  arrays['mean'], arrays['std'] = _channel_statistics(arrays['train_images'])
  return arrays


def _load_folder(name: str, data_dir, download: bool) -> dict:
  """A user's folder of images in class sub-folders (`datasets.folder_examples`), as RGB uint8 arrays."""
  del data_dir, download
  _, splits = datasets.folder_examples(datasets.user_dataset(name)[1])
  return _arrays(_read_images(splits['train']), _read_images(splits['test']))


def _load_npz(name: str, data_dir, download: bool) -> dict:
  """A user's PATH/train.npz and PATH/test.npz (their `images` and `labels`, checked by `datasets.facts`)."""
  del data_dir, download
  path = datasets.user_dataset(name)[1]
  splits = []
  for split in ('train', 'test'):
    with np.load(path / f'{split}.npz') as arrays:
      splits.append((arrays['images'], arrays['labels'].astype(np.int32)))
  return _arrays(*splits)


_LOADERS = {'sklearn': _load_digits, 'tfds': _load_tfds_arrays, 'tiny_imagenet': _load_tiny_imagenet,
            'folder': _load_folder, 'npz': _load_npz}  # by `datasets.Facts.files`: (name, data_dir, download) -> arrays


def _read_images(examples: list) -> tuple[np.ndarray, np.ndarray]:
  """(path, label) pairs as stacked RGB uint8 images and int32 labels; UserError for images of another size."""
  first = _read_rgb(examples[0][0])
  images = np.empty((len(examples), *first.shape), np.uint8)
  for i, (path, _) in enumerate(examples):
    image = _read_rgb(path)
    if image.shape != first.shape:
      raise UserError(f'{path} is {image.shape[1]}x{image.shape[0]} px, {examples[0][0]} {first.shape[1]}x'
                      f'{first.shape[0]}: the images of a dataset must share one size')
    images[i] = image
  return images, np.array([example_label for _, example_label in examples], np.int32)


def _read_rgb(path: pathlib.Path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def _load_imagenet(data_dir: str) -> StreamedDataset:
  """ImageNet's train and validation splits as TFDS data sources of undecoded JPEGs."""
  if not _is_prepared('imagenet2012', data_dir):
    raise UserError(
        f'Dataset \'imagenet2012\' is not prepared in {data_dir} (no array_record files in '
        f'{_version_dir("imagenet2012", data_dir)}) and cannot be downloaded automatically: register at '
        f'https://image-net.org/download-images, download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into '
        f'a folder MANUAL_DIR, then run `pip install tensorflow tensorflow-datasets && tfds build imagenet2012 '
        f'--data_dir={data_dir} --manual_dir=MANUAL_DIR --file_format=array_record`.')
  train, test = tfds.data_source(
      'imagenet2012', split=_splits('imagenet2012'), data_dir=data_dir, download=False,
      builder_kwargs={'file_format': 'array_record'}, decoders={'image': tfds.decode.SkipDecoding()})
  facts = FACTS['imagenet2012']
  mean, std = _pixel_units(facts.constants)
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
  return examples.batch(_host_size(batch_size, count), drop_remainder=True)[index::count][:len(examples) // batch_size]


def _host_rows(rows: np.ndarray, process: tuple[int, int]) -> np.ndarray:
  """Host `process` = (index, count)'s rows of a global batch's `rows` (along its last axis)."""
  index, count = process
  size = _host_size(rows.shape[-1], count)
  return rows[..., index * size:(index + 1) * size]


def _host_size(batch_size: int, count: int) -> int:
  """The rows of a global batch of `batch_size` that each of `count` processes feeds."""
  if batch_size % count:
    raise UserError(f'the batch size {batch_size} must be a multiple of the {count} processes')
  return batch_size // count


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
