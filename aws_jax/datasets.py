"""The dataset registry: what each dataset is, known without loading it (image shape, classes, sizes, augmentation,
normalization constants, where its files are, whether it streams).

Light on purpose (no JAX, no tfds): config validation, the signs file and its command line, and `bench --plan` read
these facts within a second; aws_jax.data loads the images. A user's own dataset is named by its files instead of
registered: `folder:PATH` (PATH/train/<class>/*.png|jpg and PATH/test/<class>/*, torchvision's ImageFolder layout) or
`npz:PATH` (PATH/train.npz and PATH/test.npz, each with `images` uint8 (N, H, W, C) and `labels` int); its facts are
read from those files.
"""
import pathlib
import zipfile
from typing import NamedTuple

import numpy as np

from aws_jax.errors import UserError

AUGMENTATIONS = ('none', 'crop_flip', 'resized_crop_flip')
FILES = ('sklearn', 'tfds', 'tiny_imagenet', 'folder', 'npz')
USER_KINDS = {'folder': ('train', 'test'), 'npz': ('train.npz', 'test.npz')}  # a user's dataset: what PATH holds
_FOLDER_LAYOUT = 'a folder dataset is PATH/train/<class>/*.png|jpg and PATH/test/<class>/*, one sub-folder per class'
_NPZ_LAYOUT = 'an npz dataset is PATH/train.npz and PATH/test.npz, each with images uint8 (N, H, W, C) and labels int'
IMAGE_SUFFIXES = ('.bmp', '.jpeg', '.jpg', '.pgm', '.png', '.ppm', '.tif', '.tiff', '.webp')  # torchvision's
# Per-channel (mean, std) in [0, 1] units: CIFAR-10's as the reference has them (its data/utils.py), ImageNet's usual.
CIFAR10_CONSTANTS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_CONSTANTS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class Facts(NamedTuple):
  image_shape: tuple[int, int, int]  # (H, W, C) the model is built for
  num_classes: int
  num_train: int                     # training examples
  num_test: int                      # examples of the split evaluated on
  augmentation: str                  # one of AUGMENTATIONS: 'crop_flip' pads by 4 and crops, 'resized_crop_flip' is
                                     # a random resized crop; both flip horizontally ('none' for imagenet2012,
                                     # whose worker processes augment as they decode)
  files: str                         # one of FILES, where the files are: scikit-learn's package; TFDS's data directory
                                     # (array_record); the official Tiny-ImageNet folder; a user's folder or .npz pair
  test_split: str = 'test'           # the split test accuracy is measured on
  constants: tuple | None = None     # (mean, std) per channel in [0, 1]: what normalization='authors' uses (the
                                     # reference's), and a streamed dataset always (it cannot compute its own)
  streamed: bool = False             # too large for memory: read batch by batch (the analyses that need the data in
                                     # memory, error barriers, are refused)

  @property
  def authors_constants(self) -> bool:
    """Whether normalization='authors' uses other constants than the training set's own."""
    return self.constants is not None and not self.streamed


FACTS = {
    'digits': Facts((8, 8, 1), 10, 1437, 360, 'none', 'sklearn'),
    'fashion_mnist': Facts((28, 28, 1), 10, 60_000, 10_000, 'none', 'tfds'),
    'cifar10': Facts((32, 32, 3), 10, 50_000, 10_000, 'crop_flip', 'tfds'),
    'cifar100': Facts((32, 32, 3), 100, 50_000, 10_000, 'crop_flip', 'tfds', constants=CIFAR10_CONSTANTS),
    'tiny_imagenet': Facts((64, 64, 3), 200, 100_000, 10_000, 'resized_crop_flip', 'tiny_imagenet',
                           constants=IMAGENET_CONSTANTS),
    'imagenet2012': Facts((224, 224, 3), 1000, 1_281_167, 50_000, 'none', 'tfds', test_split='validation',
                          constants=IMAGENET_CONSTANTS, streamed=True),
}
DATASETS = tuple(FACTS)


def user_dataset(name: str) -> tuple[str, pathlib.Path] | None:
  """(kind, PATH) of a user's dataset 'folder:PATH' or 'npz:PATH'; None for any other name."""
  kind, colon, path = name.partition(':')
  return (kind, pathlib.Path(path).expanduser()) if colon and kind in USER_KINDS else None


def check(name: str) -> None:
  """UserError (one line) unless `name` is registered, or a user's dataset whose files are there."""
  user = user_dataset(name)
  if user is None:
    if name not in FACTS:
      raise UserError(f'--config.dataset={name!r} is not one of {", ".join(DATASETS)}, '
                      f'{", ".join(f"{kind}:PATH" for kind in USER_KINDS)}')
    return
  kind, path = user
  for expected in USER_KINDS[kind]:
    if not (path / expected).exists():
      layout = _FOLDER_LAYOUT if kind == 'folder' else _NPZ_LAYOUT
      raise UserError(f'--config.dataset={name}: {path} has no {expected} ({layout})')


def facts(name: str) -> Facts:
  """The facts of `name`: registered, or read from a user's dataset's files (no image is decoded)."""
  check(name)
  user = user_dataset(name)
  if user is None:
    return FACTS[name]
  kind, path = user
  return _folder_facts(path) if kind == 'folder' else _npz_facts(path)


def folder_examples(path: pathlib.Path) -> tuple[list[str], dict[str, list[tuple[pathlib.Path, int]]]]:
  """A folder dataset's classes (the sorted sub-folders of train/, torchvision ImageFolder's order) and each split's
  (image file, label) pairs in sorted order; UserError for a class of test/ that train/ lacks, or an empty split."""
  classes = sorted(entry.name for entry in (path / 'train').iterdir() if entry.is_dir())
  label = {name: i for i, name in enumerate(classes)}
  splits = {}
  for split in ('train', 'test'):
    folders = sorted(entry for entry in (path / split).iterdir() if entry.is_dir())
    unknown = [folder.name for folder in folders if folder.name not in label]
    if unknown:
      raise UserError(f'{path / split / unknown[0]} is a class that {path / "train"} lacks ({_FOLDER_LAYOUT})')
    splits[split] = [(file, label[folder.name]) for folder in folders for file in sorted(folder.iterdir())
                     if file.suffix.lower() in IMAGE_SUFFIXES]
    if not splits[split]:
      raise UserError(f'{path / split} holds no image in class sub-folders ({_FOLDER_LAYOUT})')
  return classes, splits


def _folder_facts(path: pathlib.Path) -> Facts:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  classes, splits = folder_examples(path)
  with Image.open(splits['train'][0][0]) as image:  # reads the header only
    width, height = image.size
  return Facts((height, width, 3), len(classes), len(splits['train']), len(splits['test']), 'none', 'folder')


def _npz_facts(path: pathlib.Path) -> Facts:
  shapes, classes = {}, 0
  for split in ('train', 'test'):
    file = path / f'{split}.npz'
    shape, dtype = _npz_header(file, 'images')
    if len(shape) != 4 or dtype != np.uint8:
      raise UserError(f'{file}: images are {dtype} {shape}, not uint8 (N, H, W, C) ({_NPZ_LAYOUT})')
    with np.load(file) as arrays:  # reads the labels alone
      labels = arrays['labels']
    if labels.shape != shape[:1] or not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
      raise UserError(f'{file}: labels are {labels.dtype} {labels.shape}, not {shape[0]} integers >= 0 '
                      f'({_NPZ_LAYOUT})')
    shapes[split], classes = shape, max(classes, int(labels.max(initial=0)) + 1)
  if shapes['train'][1:] != shapes['test'][1:]:
    raise UserError(f'{path}: train.npz holds {shapes["train"][1:]} images, test.npz {shapes["test"][1:]}')
  return Facts(shapes['train'][1:], classes, shapes['train'][0], shapes['test'][0], 'none', 'npz')


def _npz_header(file: pathlib.Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
  """The shape and dtype of array `key` of an .npz file, from its header (the data is not read)."""
  try:
    with zipfile.ZipFile(file) as archive, archive.open(f'{key}.npy') as f:
      version = np.lib.format.read_magic(f)
      read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
      shape, _, dtype = read_header(f)
  except (KeyError, zipfile.BadZipFile, ValueError) as e:
    raise UserError(f'{file} has no array {key!r} ({e}; {_NPZ_LAYOUT})') from e
  return shape, dtype
