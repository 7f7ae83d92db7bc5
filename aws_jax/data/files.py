"""Each dataset's files read into numpy arrays: `LOADERS`, by where the files are (`datasets.Facts.files`).

Digits ships with scikit-learn; Tiny-ImageNet is decoded from its official folder layout (and cached as a .npz next
to it); a user's folder of images in class sub-folders or pair of .npz files is read as it is; the others come from
data prepared by TFDS in the array_record format (no TensorFlow needed to read it); Fashion-MNIST can also come from
Debian's `dataset-fashion-mnist` package. A dataset that is not there fails at once with a `UserError` that says how
to get it: nothing is downloaded unless asked.
"""
import gzip
import importlib.util
import os
import pathlib
import urllib.request
import zipfile

import numpy as np
from PIL import Image

from aws_jax import datasets
from aws_jax.datasets import FACTS
from aws_jax.errors import UserError

_FASHION_MNIST_IDX_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')
_TINY_IMAGENET_URL = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'
_TINY_IMAGENET_FOLDER = 'tiny-imagenet-200'
_TINY_IMAGENET_CACHE = 'aws_jax_arrays.npz'


def pixel_units(constants: tuple) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel (mean, std) in [0, 1] as float32 arrays in pixel units."""
  return tuple(np.array(values, np.float32) * 255 for values in constants)


def _load_tfds_arrays(name: str, data_dir, download: bool) -> dict:
  """A dataset prepared by TFDS in `data_dir` (Fashion-MNIST: or Debian's IDX files), as arrays."""
  data_dir = os.fspath(data_dir) if data_dir else default_tfds_data_dir()
  if is_prepared(name, data_dir):
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


def channel_statistics(images: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
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


def default_tfds_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR', os.path.join(os.path.expanduser('~'), 'tensorflow_datasets'))


def version_dir(name: str, data_dir: str) -> pathlib.Path:
  """Where TFDS keeps the prepared current version of `name`."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  # heavy: only where TFDS reads
  return pathlib.Path(data_dir) / name / str(tfds.builder_cls(name).VERSION)


def tfds_splits(name: str) -> tuple[str, str]:
  """The TFDS splits trained and evaluated on."""
  return 'train', FACTS[name].test_split


def is_prepared(name: str, data_dir: str) -> bool:
  """Whether `data_dir` holds `name` in the array_record format; checked by hand, so TFDS never goes to the network."""
  return all(any(version_dir(name, data_dir).glob(f'{name}-{split}.array_record*')) for split in tfds_splits(name))


def _missing_message(name: str, data_dir: str) -> str:
  message = (
      f'Dataset {name!r} is not prepared in {data_dir} (no array_record files in {version_dir(name, data_dir)}). '
      f'Prepare it with `pip install tensorflow tensorflow-datasets && '
      f'tfds build {name} --data_dir={data_dir} --file_format=array_record`, or pass --config.download=True')
  if name == 'fashion_mnist':
    message += f', or `apt-get install dataset-fashion-mnist` (read from {_FASHION_MNIST_IDX_DIR})'
  return message + '.'


def _load_tfds(name: str, data_dir: str, download: bool):
  """The train and test splits through `tfds.data_source`, as (images, labels) numpy pairs."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  sources = tfds.data_source(
      name, split=tfds_splits(name), data_dir=data_dir, download=download,
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
  directory = pathlib.Path(data_dir or os.environ.get('TINY_IMAGENET_DIR') or default_tfds_data_dir())
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
  arrays['mean'], arrays['std'] = channel_statistics(arrays['train_images'])
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


LOADERS = {'sklearn': _load_digits, 'tfds': _load_tfds_arrays, 'tiny_imagenet': _load_tiny_imagenet,
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
