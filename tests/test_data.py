"""Tests for aws_jax.data: loading (digits, small prepared TFDS datasets, Fashion-MNIST IDX, a Tiny-ImageNet folder
tree), ImageNet's streaming pipeline on a fake prepared imagenet2012, normalize, augment."""
import importlib.util
import io
import shutil
import socket
import subprocess
import sys
import zipfile

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from aws_jax import augment, data, datasets
from aws_jax import train as train_lib
from aws_jax.data import streamed
from aws_jax.errors import UserError
import fakes

pytestmark = pytest.mark.xdist_group('data')  # its module-scoped fixtures: one worker builds them once


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Loading (or failing to load) a dataset never reaches for the network unless download=True says so."""
  def refuse(*args, **kwargs):
    raise AssertionError(f'a network connection was attempted: {args}')
  monkeypatch.setattr(socket.socket, 'connect', refuse)

PAD = 4


@pytest.fixture(scope='module')
def digits():
  return data.load('digits')


def test_digits_shapes_dtypes_and_split(digits):
  assert digits.name == 'digits'
  assert digits.train_images.shape == (1437, 8, 8, 1) and digits.test_images.shape == (360, 8, 8, 1)
  assert digits.train_images.dtype == np.float32 and digits.test_images.dtype == np.float32
  assert digits.train_labels.shape == (1437,) and digits.test_labels.shape == (360,)
  assert digits.train_labels.dtype == np.int32 and digits.test_labels.dtype == np.int32
  labels = np.concatenate([digits.train_labels, digits.test_labels])
  assert labels.min() == 0 and labels.max() == 9
  assert set(np.unique(digits.test_labels)) == set(range(10))
  assert digits.train_images.min() == 0 and digits.train_images.max() == 16
  assert digits.num_classes == 10 and digits.augmentation == 'none'


def test_digits_split_is_fixed_and_disjoint(digits):
  again = data.load('digits')
  np.testing.assert_array_equal(again.train_images, digits.train_images)
  np.testing.assert_array_equal(again.test_labels, digits.test_labels)
  train_rows = {row.tobytes() for row in digits.train_images.reshape(1437, -1)}
  test_rows = [row.tobytes() for row in digits.test_images.reshape(360, -1)]
  assert sum(row in train_rows for row in test_rows) < 20  # Only the rare duplicate images of the dataset.


def test_digits_are_scikit_learns_read_without_importing_it(digits, monkeypatch):
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  reference = load_digits()
  order = np.random.default_rng(0).permutation(1797)  # the fixed split
  np.testing.assert_array_equal(digits.train_images, reference.images[order[:1437], :, :, None])
  np.testing.assert_array_equal(digits.test_labels, reference.target[order[1437:]])
  result = subprocess.run([sys.executable, '-c', 'import sys; from aws_jax import data; data.load("digits"); '
                           'print("sklearn" in sys.modules)'], capture_output=True, text=True, timeout=120)
  assert result.stdout.strip() == 'False', result.stderr
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)  # no CSV found: load_digits itself
  np.testing.assert_array_equal(data.load('digits').train_images, digits.train_images)


def test_digits_statistics_match_numpy(digits):
  pixels = digits.train_images.reshape(-1).astype(np.float64)
  assert digits.mean.shape == (1,) and digits.mean.dtype == np.float32 and digits.std.dtype == np.float32
  np.testing.assert_allclose(digits.mean, [pixels.mean()], rtol=1e-6)
  np.testing.assert_allclose(digits.std, [pixels.std()], rtol=1e-6)


def test_normalize_gives_zero_mean_unit_std(digits):
  normalized = np.asarray(augment.normalize(digits.train_images, digits.mean, digits.std))
  assert normalized.dtype == np.float32 and normalized.shape == digits.train_images.shape
  np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), [0.0], atol=1e-5)
  np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), [1.0], atol=1e-5)


def test_normalize_is_per_channel():
  images = np.stack([np.full((2, 3), 10.0), np.full((2, 3), 4.0)], axis=-1)[None]
  out = np.asarray(jax.jit(augment.normalize)(images, np.array([8.0, 2.0]), np.array([2.0, 0.5])))
  np.testing.assert_allclose(out[..., 0], 1.0)
  np.testing.assert_allclose(out[..., 1], 4.0)


def _tiny_batch(batch_size: int) -> np.ndarray:
  """Copies of one (6, 10, 2) uint8 image whose pixels are all distinct and nonzero, so a crop pins its offset."""
  image = np.arange(1, 6 * 10 * 2 + 1, dtype=np.uint8).reshape(6, 10, 2)
  return np.repeat(image[None], batch_size, axis=0)


def _transforms_matching(image: np.ndarray, out: np.ndarray) -> list:
  """Every (top, left, flipped) among the 81 crops x 2 flips of zero-padded `image` that equals `out`."""
  height, width, _ = image.shape
  padded = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)))
  matches = []
  for top in range(2 * PAD + 1):
    for left in range(2 * PAD + 1):
      crop = padded[top:top + height, left:left + width]
      matches += [(top, left, flipped) for flipped, candidate in ((False, crop), (True, crop[:, ::-1]))
                  if np.array_equal(candidate, out)]
  return matches


def test_augment_none_is_identity():
  images = _tiny_batch(3)
  np.testing.assert_array_equal(augment.augment(jax.random.key(0), images, 'none'), images)


def test_augment_crop_flip_is_a_padded_crop_maybe_flipped_with_per_example_randomness():
  images = _tiny_batch(64)
  out = np.asarray(augment.augment(jax.random.key(0), images, 'crop_flip'))
  assert out.shape == images.shape and out.dtype == images.dtype
  transforms = []
  for image, augmented in zip(images, out):
    matches = _transforms_matching(image, augmented)
    assert len(matches) == 1, 'the output is no zero-padded 4-px crop of the input, flipped or not'
    transforms.append(matches[0])
  assert len(set(transforms)) > 20  # 64 draws out of 162 transforms.
  assert {flipped for _, _, flipped in transforms} == {False, True}
  assert len({top for top, _, _ in transforms}) > 3 and len({left for _, left, _ in transforms}) > 3


@pytest.mark.parametrize('kind', ['crop_flip', 'resized_crop_flip'])
def test_augment_is_deterministic_per_key_and_jits(kind):
  images = _tiny_batch(16)
  out = np.asarray(augment.augment(jax.random.key(7), images, kind))
  np.testing.assert_array_equal(np.asarray(augment.augment(jax.random.key(7), jnp.asarray(images), kind)), out)
  assert not np.allclose(np.asarray(augment.augment(jax.random.key(8), images, kind)), out)
  in_a_step = jax.jit(lambda key, x: augment.augment(key, x, kind))  # as the jitted train step calls it
  np.testing.assert_allclose(np.asarray(in_a_step(jax.random.key(7), images)), out, atol=1e-4)


def _ramp_image(size: int) -> np.ndarray:
  """A (size, size, 3) uint8 image whose channel 0 is 4 x row, channel 1 is 4 x column (bilinear keeps ramps)."""
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  return (4 * np.stack([rows, cols, np.zeros_like(rows)], axis=-1)).astype(np.uint8)


def _fit_ramp(values: np.ndarray) -> tuple[float, float]:
  """(start, length) in input pixels of the crop whose resized ramp are `values` (4 x the sample points)."""
  size = values.shape[0]
  outputs = np.arange(1, size - 1)  # the first and last sample points may be clamped to the box
  slope, intercept = np.polyfit(outputs, values[1:-1] / 4, 1)  # point = start + (output + 1/2) length / size - 1/2
  return intercept + 0.5 - 0.5 * slope, slope * size


def _sample_points(start: int, length: int, size: int) -> np.ndarray:
  """Where PIL samples a crop [start, start + length) resized bilinearly to `size` pixels."""
  return np.clip(start + (np.arange(size) + 0.5) * length / size - 0.5, start, start + length - 1)


def test_augment_resized_crop_flip_is_a_torchvision_box_resized_bilinearly_maybe_flipped():
  size = 64
  images = np.repeat(_ramp_image(size)[None], 64, axis=0)
  out = np.asarray(augment.augment(jax.random.key(0), images, 'resized_crop_flip'))
  assert out.shape == images.shape and out.dtype == np.float32
  boxes = []
  for augmented in out:
    flipped = augmented[size // 2, 0, 1] > augmented[size // 2, -1, 1]
    augmented = augmented[:, ::-1] if flipped else augmented
    top, height = _fit_ramp(augmented[:, size // 2, 0])
    left, width = _fit_ramp(augmented[size // 2, :, 1])
    box = np.array([top, left, height, width])
    np.testing.assert_allclose(box, np.round(box), atol=1e-3)  # an integer box, as torchvision draws it
    top, left, height, width = np.round(box).astype(int)
    assert 0 <= top and top + height <= size and 0 <= left and left + width <= size
    assert 0.48 <= height * width / size**2 <= 1 and 0.72 <= width / height <= 1.39
    np.testing.assert_allclose(augmented[..., 0], 4 * _sample_points(top, height, size)[:, None].repeat(size, 1),
                               atol=1e-3)
    np.testing.assert_allclose(augmented[..., 1], 4 * _sample_points(left, width, size)[None].repeat(size, 0),
                               atol=1e-3)
    np.testing.assert_array_equal(augmented[..., 2], 0)
    boxes.append((top, left, height, width, flipped))
  assert len(set(boxes)) > 40 and {box[-1] for box in boxes} == {False, True}
  assert len({box[2] for box in boxes}) > 5 and len({box[3] for box in boxes}) > 5


def test_crop_boxes_fall_back_to_the_central_box_as_torchvision():
  crop_box = jax.jit(augment._crop_box, static_argnums=(1, 2))  # pylint: disable=protected-access
  top, left, height, width = (float(v) for v in crop_box(jnp.zeros(22), 10, 1000))
  assert (top, left, height, width) == (0, 493, 10, 13)  # no box of 1/2 the area fits: the whole height, ratio 4/3
  assert augment.random_box(np.random.default_rng(0), 10, 1000, (0.08, 1.0)) == (0, 493, 10, 13)
  assert augment.random_box(np.random.default_rng(0), 1000, 10, (0.08, 1.0)) == (493, 0, 13, 10)


def test_random_box_draws_like_torchvision():
  rng = np.random.default_rng(0)
  boxes = np.array([augment.random_box(rng, 300, 400, (0.08, 1.0)) for _ in range(500)])
  top, left, height, width = boxes.T
  assert (top >= 0).all() and (top + height <= 300).all() and (left >= 0).all() and (left + width <= 400).all()
  area = height * width / (300 * 400)
  assert area.min() < 0.12 and area.max() > 0.9 and ((0.075 < area) & (area < 1.01)).all()
  assert ((0.74 < width / height) & (width / height < 1.35)).all()
  assert len(set(map(tuple, boxes))) == 500


def test_augment_rejects_unknown_kind():
  with pytest.raises(UserError, match='crop_flip'):
    augment.augment(jax.random.key(0), _tiny_batch(1), 'mixup')


def test_unknown_dataset_lists_choices():
  with pytest.raises(UserError, match='cifar100') as error:
    data.load('imagenet')
  assert all(name in str(error.value) for name in datasets.DATASETS)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_missing_dataset_fails_fast_with_one_line(tmp_path, name):
  with pytest.raises(UserError) as error:
    data.load(name, data_dir=tmp_path)
  message = str(error.value)
  assert '\n' not in message
  assert repr(name) in message and str(tmp_path) in message and 'download' in message


def test_missing_dataset_default_data_dir_is_tfds_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  with pytest.raises(UserError, match=str(tmp_path / 'tfds')):
    data.load('cifar10')


def test_missing_fashion_mnist_mentions_debian_package(tmp_path, monkeypatch):
  monkeypatch.setattr(data.files, '_FASHION_MNIST_IDX_DIR', tmp_path / 'no-debian-package')
  with pytest.raises(UserError, match='dataset-fashion-mnist') as error:
    data.load('fashion_mnist', data_dir=tmp_path)
  assert str(tmp_path) in str(error.value) and '\n' not in str(error.value)


def test_cifar10_from_prepared_tfds_data(tmp_path):
  rng = np.random.default_rng(0)
  splits = {split: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10)
            for split, n in (('train', 12), ('test', 5))}
  fakes.prepare_fake_tfds('cifar10', tmp_path, {
      split: [fakes.example(id=b'%s_%05d' % (split.encode(), i), image=fakes.encode(image, 'PNG'), label=label)
              for i, (image, label) in enumerate(zip(images, labels))]
      for split, (images, labels) in splits.items()})
  dataset = data.load('cifar10', data_dir=tmp_path)
  assert dataset.train_images.shape == (12, 32, 32, 3) and dataset.test_images.shape == (5, 32, 32, 3)
  assert dataset.train_images.dtype == np.uint8
  assert dataset.train_labels.dtype == np.int32 and dataset.test_labels.shape == (5,)
  np.testing.assert_array_equal(dataset.train_images, splits['train'][0])
  np.testing.assert_array_equal(dataset.train_labels, splits['train'][1])
  np.testing.assert_array_equal(dataset.test_images, splits['test'][0])
  np.testing.assert_array_equal(dataset.test_labels, splits['test'][1])
  assert dataset.num_classes == 10 and dataset.augmentation == 'crop_flip'
  np.testing.assert_allclose(dataset.mean, splits['train'][0].reshape(-1, 3).mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(dataset.std, splits['train'][0].reshape(-1, 3).std(axis=0), rtol=1e-6)


@pytest.mark.skipif(not data.files._FASHION_MNIST_IDX_DIR.is_dir(),
                    reason=f'{data.files._FASHION_MNIST_IDX_DIR} missing: apt-get install dataset-fashion-mnist')
def test_fashion_mnist_from_debian_idx_files(tmp_path):
  dataset = data.load('fashion_mnist', data_dir=tmp_path)
  assert dataset.train_images.shape == (60000, 28, 28, 1) and dataset.test_images.shape == (10000, 28, 28, 1)
  assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
  assert dataset.train_labels.shape == (60000,) and dataset.test_labels.shape == (10000,)
  np.testing.assert_array_equal(np.bincount(dataset.train_labels), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(dataset.test_labels), np.full(10, 1000))
  assert dataset.num_classes == 10 and dataset.augmentation == 'none'
  assert 60 < dataset.mean[0] < 90 and 80 < dataset.std[0] < 100  # Known: about 72.9 and 90.0.


TINY_WNIDS = ('n02', 'n01', 'n03')  # wnids.txt's order; labels follow the sorted order: n01 0, n02 1, n03 2
TINY_COLOURS = {'n01': (200, 40, 40), 'n02': (40, 200, 40), 'n03': (40, 40, 200)}
TINY_VAL = (('val_1.JPEG', 'n01'), ('val_0.JPEG', 'n03'), ('val_3.JPEG', 'n03'), ('val_2.JPEG', 'n02'))


def _make_tiny_imagenet(root) -> None:
  """A tiny-imagenet-200/ tree as the official zip unpacks: 2 solid-colour 64-px JPEGs a class (and a grey one in
  n03), 4 validation images."""
  (root / 'val' / 'images').mkdir(parents=True)
  (root / 'wnids.txt').write_text('\n'.join(TINY_WNIDS) + '\n')
  for wnid in TINY_WNIDS:
    (root / 'train' / wnid / 'images').mkdir(parents=True)
    (root / 'train' / wnid / f'{wnid}_boxes.txt').write_text('')
    for i in range(2):
      Image.new('RGB', (64, 64), TINY_COLOURS[wnid]).save(root / 'train' / wnid / 'images' / f'{wnid}_{i}.JPEG')
  Image.new('L', (64, 64), 128).save(root / 'train' / 'n03' / 'images' / 'n03_2.JPEG')
  for name, wnid in TINY_VAL:
    Image.new('RGB', (64, 64), TINY_COLOURS[wnid]).save(root / 'val' / 'images' / name)
  (root / 'val' / 'val_annotations.txt').write_text(''.join(f'{name}\t{wnid}\t0\t0\t63\t63\n'
                                                            for name, wnid in TINY_VAL))


def _check_tiny_imagenet(dataset) -> None:
  assert dataset.name == 'tiny_imagenet' and dataset.num_classes == 200
  assert dataset.augmentation == 'resized_crop_flip'
  assert dataset.train_images.shape == (7, 64, 64, 3) and dataset.test_images.shape == (4, 64, 64, 3)
  assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
  assert dataset.num_train == 7 and dataset.image_shape == (64, 64, 3)
  np.testing.assert_array_equal(dataset.train_labels, [0, 0, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(dataset.test_labels, [2, 0, 1, 2])  # val_0 .. val_3
  colours = [TINY_COLOURS[wnid] for wnid in sorted(TINY_WNIDS)] + [(128, 128, 128)]
  expected = np.array([colours[i] for i in (0, 0, 1, 1, 2, 2, 3)])
  np.testing.assert_allclose(dataset.train_images.mean(axis=(1, 2)), expected, atol=3)
  np.testing.assert_allclose(dataset.test_images.mean(axis=(1, 2)), expected[[4, 0, 2, 4]], atol=3)
  pixels = dataset.train_images.reshape(-1, 3).astype(np.float64)
  np.testing.assert_allclose(dataset.mean, pixels.mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(dataset.std, pixels.std(axis=0), rtol=1e-6)


def test_tiny_imagenet_from_its_folder_layout_then_from_the_cache(tmp_path):
  root = tmp_path / 'tiny-imagenet-200'
  _make_tiny_imagenet(root)
  dataset = data.load('tiny_imagenet', data_dir=tmp_path)
  _check_tiny_imagenet(dataset)
  assert (root / 'aws_jax_arrays.npz').is_file()
  shutil.rmtree(root / 'train')  # from now on only the cache can provide the images
  cached = data.load('tiny_imagenet', data_dir=tmp_path)
  _check_tiny_imagenet(cached)
  np.testing.assert_array_equal(cached.train_images, dataset.train_images)
  np.testing.assert_array_equal(cached.test_images, dataset.test_images)


def test_tiny_imagenet_found_through_its_environment_variable_or_its_own_folder(tmp_path, monkeypatch):
  _make_tiny_imagenet(tmp_path / 'tiny-imagenet-200')
  monkeypatch.setenv('TINY_IMAGENET_DIR', str(tmp_path))
  _check_tiny_imagenet(data.load('tiny_imagenet'))
  monkeypatch.setenv('TINY_IMAGENET_DIR', str(tmp_path / 'elsewhere'))
  _check_tiny_imagenet(data.load('tiny_imagenet', data_dir=tmp_path / 'tiny-imagenet-200'))


def test_missing_tiny_imagenet_fails_fast_with_one_line(tmp_path):
  with pytest.raises(UserError) as error:
    data.load('tiny_imagenet', data_dir=tmp_path)
  message = str(error.value)
  assert '\n' not in message and str(tmp_path / 'tiny-imagenet-200') in message
  assert 'http://cs231n.stanford.edu/tiny-imagenet-200.zip' in message and 'download=True' in message


def test_incomplete_tiny_imagenet_is_refused_and_not_cached(tmp_path):
  root = tmp_path / 'tiny-imagenet-200'
  _make_tiny_imagenet(root)
  shutil.rmtree(root / 'train' / 'n02')
  with pytest.raises(UserError, match='incomplete'):
    data.load('tiny_imagenet', data_dir=tmp_path)
  assert not (root / 'aws_jax_arrays.npz').exists()


def test_tiny_imagenet_downloads_the_official_zip_when_asked(tmp_path, monkeypatch):
  _make_tiny_imagenet(tmp_path / 'unzipped' / 'tiny-imagenet-200')
  archive = tmp_path / 'tiny-imagenet-200.zip'
  with zipfile.ZipFile(archive, 'w') as f:
    for path in sorted((tmp_path / 'unzipped').rglob('*')):
      f.write(path, path.relative_to(tmp_path / 'unzipped'))
  monkeypatch.setattr(data.files, '_TINY_IMAGENET_URL', archive.as_uri())
  _check_tiny_imagenet(data.load('tiny_imagenet', data_dir=tmp_path / 'data', download=True))
  assert sorted(path.name for path in (tmp_path / 'data').iterdir()) == ['tiny-imagenet-200']


def _user_splits(rng) -> dict:
  """{split: {class: [images]}} of 12 x 10 px RGB images: 3 classes in train/, 2 of them in test/."""
  images = lambda count: list(rng.integers(0, 256, (count, 12, 10, 3), dtype=np.uint8))
  return {'train': {'cat': images(2), 'ant': images(3), 'bee': images(1)}, 'test': {'bee': images(2), 'ant': images(1)}}


def test_a_folder_of_images_in_class_sub_folders_is_a_dataset(tmp_path):
  splits = _user_splits(np.random.default_rng(0))
  fakes.write_image_folder(tmp_path, splits)
  (tmp_path / 'train' / 'ant' / 'notes.txt').write_text('not an image')
  dataset = data.load(f'folder:{tmp_path}')
  assert dataset.in_memory and dataset.name == f'folder:{tmp_path}' and dataset.num_classes == 3
  assert dataset.image_shape == (12, 10, 3) and dataset.augmentation == 'none'
  np.testing.assert_array_equal(dataset.train_labels, [0, 0, 0, 1, 2, 2])  # ant, bee, cat: ImageFolder's order
  np.testing.assert_array_equal(dataset.test_labels, [0, 1, 1])
  np.testing.assert_array_equal(dataset.train_images, np.stack(splits['train']['ant'] + splits['train']['bee']
                                                               + splits['train']['cat']))
  np.testing.assert_array_equal(dataset.test_images[1:], np.stack(splits['test']['bee']))
  np.testing.assert_allclose(dataset.mean, dataset.train_images.reshape(-1, 3).mean(axis=0), rtol=1e-6)
  facts = datasets.facts(f'folder:{tmp_path}')
  assert (facts.image_shape, facts.num_classes, facts.num_train, facts.num_test) == ((12, 10, 3), 3, 6, 3)


def test_a_pair_of_npz_files_is_a_dataset(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {split: (rng.integers(0, 256, (n, 6, 6, 2), dtype=np.uint8), np.arange(n) % 4)
            for split, n in (('train', 8), ('test', 3))}
  for split, (images, labels) in arrays.items():
    np.savez(tmp_path / f'{split}.npz', images=images, labels=labels)
  dataset = data.load(f'npz:{tmp_path}')
  assert dataset.num_classes == 4 and dataset.image_shape == (6, 6, 2) and dataset.train_labels.dtype == np.int32
  np.testing.assert_array_equal(dataset.train_images, arrays['train'][0])
  np.testing.assert_array_equal(dataset.test_labels, arrays['test'][1])
  facts = datasets.facts(f'npz:{tmp_path}')
  assert (facts.image_shape, facts.num_classes, facts.num_train, facts.num_test) == ((6, 6, 2), 4, 8, 3)


def test_a_missing_or_malformed_user_dataset_fails_fast_with_one_line(tmp_path):
  for name, fragment in ((f'folder:{tmp_path / "none"}', f'{tmp_path / "none"} has no train'),
                         (f'npz:{tmp_path}', f'{tmp_path} has no train.npz'),
                         ('zip:/data', 'folder:PATH, npz:PATH')):
    with pytest.raises(UserError, match=fragment) as error:
      data.load(name)
    assert '\n' not in str(error.value)
  fakes.write_image_folder(tmp_path / 'classes', {'train': {'a': [np.zeros((4, 4, 3), np.uint8)]},
                                                   'test': {'b': [np.zeros((4, 4, 3), np.uint8)]}})
  with pytest.raises(UserError, match='is a class that .* lacks'):
    data.load(f'folder:{tmp_path / "classes"}')
  fakes.write_image_folder(tmp_path / 'sizes', {'train': {'a': [np.zeros((4, 4, 3), np.uint8),
                                                                np.zeros((5, 4, 3), np.uint8)]},
                                                 'test': {'a': [np.zeros((4, 4, 3), np.uint8)]}})
  with pytest.raises(UserError, match='must share one size'):
    data.load(f'folder:{tmp_path / "sizes"}')
  np.savez(tmp_path / 'train.npz', images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2, int))
  np.savez(tmp_path / 'test.npz', images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.zeros(2, int))
  with pytest.raises(UserError, match=r'not uint8 \(N, H, W, C\)'):
    data.load(f'npz:{tmp_path}')


def test_an_in_memory_source_batches_indices_per_seed_host_and_step(digits):
  assert digits.in_memory and [a.shape for a in digits.resident('train')] == [(1437, 8, 8, 1), (1437,)]
  order = {seed: train_lib.epoch_order(seed, 2, 3, 1437, 64) for seed in (1, 5)}
  alone = list(digits.train_batches(64, seeds=(1,), phase=2, epoch=3))
  np.testing.assert_array_equal(np.stack([indices for (indices,) in alone]), order[1])
  together = list(digits.train_batches(64, seeds=(1, 5), phase=2, epoch=3, start=20))
  np.testing.assert_array_equal(np.stack([indices for (indices,) in together]),
                                np.stack([order[1][20:], order[5][20:]], axis=1))
  host = list(digits.train_batches(64, seeds=(1,), phase=2, epoch=3, process=(1, 4)))
  np.testing.assert_array_equal(np.stack([indices for (indices,) in host]), order[1][:, 16:32])
  (first, first_valid), (second, second_valid) = digits.test_batches(256, process=(1, 2))  # 360: 256 + 104, padded
  np.testing.assert_array_equal(first, np.arange(128, 256))  # host 1 of 2: the second half of each batch
  assert first_valid.all() and not second_valid.any() and not second.any()  # rows 384..511: all padding


def _imagenet_image(label: int, height: int, width: int) -> np.ndarray:
  """A solid image whose colour encodes `label`, so it survives any crop, resize and flip."""
  return np.broadcast_to(np.array([20 * label, 250 - 20 * label, 100], np.uint8), (height, width, 3)).copy()


@pytest.fixture(scope='module')
def fake_imagenet(tmp_path_factory):
  """A prepared array_record imagenet2012 of 11 solid training JPEGs (label i: colour i) of assorted sizes and
  5 noisy validation JPEGs (label 100 + i); returns (data_dir, the validation JPEGs)."""
  data_dir = tmp_path_factory.mktemp('tfds')
  rng = np.random.default_rng(0)
  train = [fakes.encode(_imagenet_image(i, 180 + 17 * i, 320 - 13 * i), 'JPEG') for i in range(11)]
  shapes = ((300, 240), (240, 300), (256, 256), (333, 500), (231, 224))
  validation = [fakes.encode(rng.integers(0, 256, shape + (3,), dtype=np.uint8), 'JPEG') for shape in shapes]
  fakes.prepare_fake_tfds('imagenet2012', data_dir, {
      'train': [fakes.example(file_name=b'n%08d_%d.JPEG' % (i, i), image=image, label=i)
                for i, image in enumerate(train)],
      'validation': [fakes.example(file_name=b'ILSVRC2012_val_%08d.JPEG' % i, image=image, label=100 + i)
                     for i, image in enumerate(validation)]})
  return data_dir, validation


def _epoch(dataset, seed, **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """One epoch of batches of 4 for `seed`: (images, labels), each stacked over the steps; each batch's indices are
  its own rows (those of the host, with `process`)."""
  batches = list(dataset.train_batches(4, seeds=(seed,), **kwargs))
  index, count = kwargs.get('process', (0, 1))
  for _, _, indices in batches:
    np.testing.assert_array_equal(indices, np.arange(4 // count) + index * 4 // count)
  return np.stack([images for images, _, _ in batches]), np.stack([labels for _, labels, _ in batches])


def test_imagenet_streams_from_prepared_tfds_data(fake_imagenet):
  dataset = data.load('imagenet2012', data_dir=fake_imagenet[0])
  assert isinstance(dataset, streamed.StreamedDataset) and dataset.name == 'imagenet2012' and not dataset.in_memory
  assert dataset.resident('train') == dataset.resident('test') == ()
  assert dataset.num_classes == 1000 and dataset.augmentation == 'none' and dataset.image_shape == (224, 224, 3)
  assert dataset.num_train == 11 and dataset.num_test == 5
  np.testing.assert_allclose(dataset.mean, [123.675, 116.28, 103.53], rtol=1e-6)
  np.testing.assert_allclose(dataset.std, [58.395, 57.12, 57.375], rtol=1e-6)


def test_imagenet_train_batches_are_a_seeded_permutation_of_augmented_examples(fake_imagenet):
  dataset = data.load('imagenet2012', data_dir=fake_imagenet[0])
  images, labels = _epoch(dataset, seed=1, phase=0, epoch=0)
  assert images.shape == (2, 4, 224, 224, 3) and images.dtype == np.uint8  # 11 examples: 2 batches of 4
  assert labels.shape == (2, 4) and labels.dtype == np.int32 and len(set(labels.ravel())) == 8
  expected = np.stack([_imagenet_image(label, 1, 1)[0, 0] for label in labels.ravel()]).reshape(2, 4, 1, 1, 3)
  np.testing.assert_allclose(images, np.broadcast_to(expected, images.shape), atol=3)  # images follow labels
  again = _epoch(dataset, seed=1, phase=0, epoch=0)
  np.testing.assert_array_equal(again[0], images)
  np.testing.assert_array_equal(again[1], labels)
  orders = {tuple(_epoch(dataset, seed=seed, phase=phase, epoch=epoch)[1].ravel())
            for seed, phase, epoch in ((1, 0, 1), (1, 1, 0), (2, 0, 0))}
  assert len(orders | {tuple(labels.ravel())}) == 4


def test_imagenet_batches_of_several_seeds_stack_each_seeds_own_and_resume_at_a_step(fake_imagenet, monkeypatch):
  dataset = data.load('imagenet2012', data_dir=fake_imagenet[0])
  decoded = []
  real_example = streamed._imagenet_train_example
  monkeypatch.setattr(streamed, '_imagenet_train_example', lambda *args: decoded.append(1) or real_example(*args))
  together = list(dataset.train_batches(4, seeds=(1, 2), phase=0, epoch=0))
  assert [images.shape for images, _, _ in together] == [(2, 4, 224, 224, 3)] * 2
  for seed_index, seed in enumerate((1, 2)):
    images, labels = _epoch(dataset, seed=seed, phase=0, epoch=0)
    np.testing.assert_array_equal(np.stack([batch[1][seed_index] for batch in together]), labels)
    np.testing.assert_array_equal(np.stack([batch[0][seed_index] for batch in together]), images)
  decoded.clear()
  [(images, labels, _)] = dataset.train_batches(4, seeds=(1,), phase=0, epoch=0, start=1)
  assert len(decoded) == 4  # the batch before `start` is not decoded
  np.testing.assert_array_equal(labels, _epoch(dataset, seed=1, phase=0, epoch=0)[1][1])


def test_imagenet_train_example_is_torchvisions_random_resized_crop_then_flip():
  image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
  flips = []
  for seed in range(8):
    out = streamed._imagenet_train_example({'image': fakes.encode(image, 'PNG'), 'label': 7},
                                           np.random.default_rng(seed))
    assert out['label'] == 7 and out['label'].dtype == np.int32
    rng = np.random.default_rng(seed)  # replays the draws: the box (scale (0.08, 1)), then the flip
    top, left, height, width = augment.random_box(rng, 300, 400, (0.08, 1.0))
    expected = np.asarray(Image.fromarray(image).crop((left, top, left + width, top + height))
                          .resize((224, 224), Image.Resampling.BILINEAR))
    flips.append(rng.random() < 0.5)
    np.testing.assert_array_equal(out['image'], expected[:, ::-1] if flips[-1] else expected)
  assert set(flips) == {False, True}


def test_imagenet_batches_do_not_depend_on_the_number_of_workers(fake_imagenet, monkeypatch):
  dataset = data.load('imagenet2012', data_dir=fake_imagenet[0])
  in_process = _epoch(dataset, seed=3, phase=2, epoch=5)
  asked = []
  real_prefetch = grain.IterDataset.mp_prefetch
  monkeypatch.setattr(grain.IterDataset, 'mp_prefetch', lambda self, options, *args, **kwargs: (
      asked.append(options.num_workers), real_prefetch(self, options, *args, **kwargs))[1])
  in_workers = _epoch(dataset, seed=3, phase=2, epoch=5, workers=2)
  test_in_workers = list(dataset.test_batches(2, workers=2))
  assert asked == [2, 2]  # both splits were decoded by two worker processes
  np.testing.assert_array_equal(in_workers[0], in_process[0])
  np.testing.assert_array_equal(in_workers[1], in_process[1])
  for in_worker, here in zip(test_in_workers, dataset.test_batches(2), strict=True):
    for a, b in zip(in_worker, here, strict=True):
      np.testing.assert_array_equal(a, b)


def test_imagenet_test_batches_resize_256_centre_crop_224_and_pad(fake_imagenet):
  dataset = data.load('imagenet2012', data_dir=fake_imagenet[0])
  batches = list(dataset.test_batches(2))
  assert len(batches) == 3 and all(images.shape == (2, 224, 224, 3) for images, _, _, _ in batches)
  assert all(np.array_equal(indices, [0, 1]) for _, _, indices, _ in batches)
  images = np.concatenate([images for images, _, _, _ in batches])
  labels = np.concatenate([labels for _, labels, _, _ in batches])
  valid = np.concatenate([valid for _, _, _, valid in batches])
  assert images.dtype == np.uint8 and labels.dtype == np.int32 and valid.dtype == np.float32
  np.testing.assert_array_equal(labels, [100, 101, 102, 103, 104, 0])
  np.testing.assert_array_equal(valid, [1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(images[5], 0)
  for image, jpeg in zip(images, fake_imagenet[1]):
    original = Image.open(io.BytesIO(jpeg))
    scale = 256 / min(original.size)
    resized = original.resize(tuple(256 if side == min(original.size) else int(side * scale)
                                    for side in original.size), Image.Resampling.BILINEAR)
    left, top = (round((side - 224) / 2) for side in resized.size)
    np.testing.assert_array_equal(image, np.asarray(resized)[top:top + 224, left:left + 224])


def test_imagenet_hosts_feed_their_rows_of_each_global_batch(fake_imagenet):
  dataset = data.load('imagenet2012', data_dir=fake_imagenet[0])
  whole = _epoch(dataset, seed=1, phase=0, epoch=0)
  hosts = [_epoch(dataset, seed=1, phase=0, epoch=0, process=(index, 2)) for index in range(2)]
  np.testing.assert_array_equal(np.concatenate([images for images, _ in hosts], axis=1), whole[0])
  np.testing.assert_array_equal(np.concatenate([labels for _, labels in hosts], axis=1), whole[1])
  test_rows = [[batch for batch in dataset.test_batches(4, process=(index, 2))] for index in range(2)]
  assert [len(rows) for rows in test_rows] == [2, 2]
  np.testing.assert_array_equal(np.concatenate([labels for rows in zip(*test_rows) for _, labels, _, _ in rows]),
                                [100, 101, 102, 103, 104, 0, 0, 0])
  assert [indices.tolist() for rows in zip(*test_rows) for _, _, indices, _ in rows] == [[0, 1], [2, 3]] * 2
  with pytest.raises(UserError, match='multiple of the 3 processes'):
    next(dataset.train_batches(4, seeds=(1,), phase=0, epoch=0, process=(0, 3)))


def test_missing_imagenet_fails_fast_with_one_line_on_manual_download(tmp_path):
  with pytest.raises(UserError) as error:
    data.load('imagenet2012', data_dir=tmp_path, download=True)
  message = str(error.value)
  assert '\n' not in message and str(tmp_path) in message and 'image-net.org' in message
  assert f'tfds build imagenet2012 --data_dir={tmp_path} --manual_dir=' in message


def test_protocol_trains_on_streamed_imagenet(fake_imagenet, tmp_path, monkeypatch):
  """The whole protocol on a streamed dataset: batches from the pipeline, decoded as the steps need them (no split
  read whole), evaluation over its test batches."""
  from aws_jax import config as config_lib, protocol  # pylint: disable=import-outside-toplevel
  config = config_lib.base_config()
  config.update({'dataset': 'imagenet2012', 'data_dir': str(fake_imagenet[0]), 'model': 'small_cnn',
                 'batch_size': 4, 'eval_batch_size': 4, 'progress': False})
  config.prune.update({'warmup_epochs': 1, 'rounds': 1, 'round_epochs': 1})
  config.final.update({'epochs': 1, 'modes': ('signed',), 'seeds': (2,)})
  config.barrier.update({'psi_reset': False, 'lmc': False, 'sgd_noise': False})
  decoded = []
  real_example = streamed._imagenet_train_example
  monkeypatch.setattr(streamed, '_imagenet_train_example', lambda *args: decoded.append(1) or real_example(*args))
  monkeypatch.setattr(data.files, '_to_arrays', lambda source: pytest.fail('a streamed split was read whole'))
  results = protocol.run(config, str(tmp_path))
  assert len(decoded) == 3 * 2 * 4  # streamed: each of 3 epochs decodes its 2 batches of 4, nothing more
  assert [r['fraction_left'] for r in results['rounds']] == pytest.approx([1.0, 0.8], abs=1e-3)
  assert [(f['mode'], f['epochs']) for f in results['final']] == [('signed', 1)]
  for r in results['rounds'] + results['final']:
    assert 0 <= r['test_accuracy'] <= 1 and np.isfinite(r['train_loss'])


def test_authors_normalization_is_the_references_constants_for_cifar100_and_tiny_imagenet(monkeypatch):
  """The reference normalises CIFAR-100 with CIFAR-10's constants and Tiny-ImageNet with ImageNet's; computed
  statistics stay for every other dataset, and for all with normalization='computed'."""
  digits = data.load('digits')
  arrays = {key: getattr(digits, key) for key in ('train_images', 'train_labels', 'test_images', 'test_labels')}
  monkeypatch.setattr(data.files, 'LOADERS', {files: lambda *_: dict(arrays) for files in data.files.LOADERS})
  constants = {'cifar100': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
               'tiny_imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
  for name in ('digits', 'fashion_mnist', 'cifar10', 'cifar100', 'tiny_imagenet'):
    authors, computed = data.load(name, normalization='authors'), data.load(name, normalization='computed')
    np.testing.assert_array_equal(computed.mean, digits.mean)
    if name in constants:
      np.testing.assert_allclose([authors.mean, authors.std], 255 * np.array(constants[name]), rtol=1e-6)
    else:
      np.testing.assert_array_equal([authors.mean, authors.std], [digits.mean, digits.std])
