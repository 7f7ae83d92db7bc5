"""Tests for aws_jax.data: loading (digits, a small prepared TFDS dataset, Fashion-MNIST IDX), normalize, augment."""
import io
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from PIL import Image
from tensorflow_datasets.proto import tf_example_pb2
from tensorflow_datasets.proto import tf_feature_pb2

from aws_jax import data
from aws_jax.errors import UserError

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


def test_digits_statistics_match_numpy(digits):
  pixels = digits.train_images.reshape(-1).astype(np.float64)
  assert digits.mean.shape == (1,) and digits.mean.dtype == np.float32 and digits.std.dtype == np.float32
  np.testing.assert_allclose(digits.mean, [pixels.mean()], rtol=1e-6)
  np.testing.assert_allclose(digits.std, [pixels.std()], rtol=1e-6)


def test_normalize_gives_zero_mean_unit_std(digits):
  normalized = np.asarray(data.normalize(digits.train_images, digits.mean, digits.std))
  assert normalized.dtype == np.float32 and normalized.shape == digits.train_images.shape
  np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), [0.0], atol=1e-5)
  np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), [1.0], atol=1e-5)


def test_normalize_is_per_channel():
  images = np.stack([np.full((2, 3), 10.0), np.full((2, 3), 4.0)], axis=-1)[None]
  out = np.asarray(jax.jit(data.normalize)(images, np.array([8.0, 2.0]), np.array([2.0, 0.5])))
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
  np.testing.assert_array_equal(data.augment(jax.random.key(0), images, 'none'), images)


def test_augment_crop_flip_is_a_padded_crop_maybe_flipped_with_per_example_randomness():
  images = _tiny_batch(64)
  out = np.asarray(data.augment(jax.random.key(0), images, 'crop_flip'))
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
  key = jax.random.key(7)
  eager = np.asarray(data.augment(key, images, kind))
  np.testing.assert_array_equal(np.asarray(data.augment(key, images, kind)), eager)
  jitted = jax.jit(data.augment, static_argnames='kind')
  np.testing.assert_allclose(np.asarray(jitted(key, jnp.asarray(images), kind=kind)), eager, atol=1e-4)
  assert not np.allclose(np.asarray(jitted(jax.random.key(8), images, kind=kind)), eager)


def _ramp_image(size: int) -> np.ndarray:
  """A (size, size, 3) uint8 image whose channel 0 is 4 x row, channel 1 is 4 x column (bilinear keeps ramps)."""
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing='ij')
  return (4 * np.stack([rows, cols, np.zeros_like(rows)], axis=-1)).astype(np.uint8)


def _fit_ramp(values: np.ndarray) -> tuple[float, float]:
  """(start, length) in input pixels of the crop whose resized ramp `values` (outputs 1..size-2) are."""
  size = values.shape[0]
  outputs = np.arange(1, size - 1)
  slope, intercept = np.polyfit(outputs, values[1:-1] / 4, 1)  # input = start + (output + 1/2) length / size - 1/2
  length = slope * size
  return intercept - 0.5 * slope + 0.5, length


def test_augment_resized_crop_flip_is_a_torchvision_box_resized_bilinearly_maybe_flipped():
  size = 64
  images = np.repeat(_ramp_image(size)[None], 64, axis=0)
  out = np.asarray(data.augment(jax.random.key(0), images, 'resized_crop_flip'))
  assert out.shape == images.shape and out.dtype == np.float32
  boxes = []
  for augmented in out:
    flipped = augmented[size // 2, 1, 1] > augmented[size // 2, -2, 1]
    augmented = augmented[:, ::-1] if flipped else augmented
    top, height = _fit_ramp(augmented[:, size // 2, 0])
    left, width = _fit_ramp(augmented[size // 2, :, 1])
    box = np.array([top, left, height, width])
    np.testing.assert_allclose(box, np.round(box), atol=1e-3)  # an integer box, as torchvision draws it
    top, left, height, width = np.round(box).astype(int)
    assert 0 <= top and top + height <= size and 0 <= left and left + width <= size
    assert 0.48 <= height * width / size**2 <= 1 and 0.72 <= width / height <= 1.39
    expected = 4 * (np.array([top, left])[:, None] + (np.arange(size) + 0.5) * np.array([height, width])[:, None]
                    / size - 0.5)
    np.testing.assert_allclose(augmented[1:-1, 1:-1, 0], expected[0, 1:-1, None].repeat(size - 2, 1), atol=1e-2)
    np.testing.assert_allclose(augmented[1:-1, 1:-1, 1], expected[1, None, 1:-1].repeat(size - 2, 0), atol=1e-2)
    boxes.append((top, left, height, width, flipped))
  assert len(set(boxes)) > 40 and {box[-1] for box in boxes} == {False, True}
  assert len({box[2] for box in boxes}) > 5 and len({box[3] for box in boxes}) > 5


def test_crop_boxes_fall_back_to_the_central_box_as_torchvision():
  top, left, height, width = (float(v) for v in data._crop_box(jax.random.key(0), 10, 1000))
  assert (top, left, height, width) == (0, 493, 10, 13)  # no box of 1/2 the area fits: the whole height, ratio 4/3
  assert data._random_box(np.random.default_rng(0), 10, 1000, (0.08, 1.0)) == (0, 493, 10, 13)
  assert data._random_box(np.random.default_rng(0), 1000, 10, (0.08, 1.0)) == (493, 0, 13, 10)


def test_random_box_draws_like_torchvision():
  rng = np.random.default_rng(0)
  boxes = np.array([data._random_box(rng, 300, 400, (0.08, 1.0)) for _ in range(500)])
  top, left, height, width = boxes.T
  assert (top >= 0).all() and (top + height <= 300).all() and (left >= 0).all() and (left + width <= 400).all()
  area = height * width / (300 * 400)
  assert area.min() < 0.12 and area.max() > 0.9 and ((0.075 < area) & (area < 1.01)).all()
  assert ((0.74 < width / height) & (width / height < 1.35)).all()
  assert len(set(map(tuple, boxes))) == 500


def test_augment_rejects_unknown_kind():
  with pytest.raises(UserError, match='crop_flip'):
    data.augment(jax.random.key(0), _tiny_batch(1), 'mixup')


def test_unknown_dataset_lists_choices():
  with pytest.raises(UserError, match='cifar100') as error:
    data.load('imagenet')
  assert all(name in str(error.value) for name in data.DATASETS)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_missing_dataset_fails_fast_with_one_line(tmp_path, name):
  start = time.monotonic()
  with pytest.raises(UserError) as error:
    data.load(name, data_dir=tmp_path)
  assert time.monotonic() - start < 10
  message = str(error.value)
  assert '\n' not in message
  assert repr(name) in message and str(tmp_path) in message and 'download' in message


def test_missing_dataset_default_data_dir_is_tfds_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  with pytest.raises(UserError, match=str(tmp_path / 'tfds')):
    data.load('cifar10')


def test_missing_fashion_mnist_mentions_debian_package(tmp_path, monkeypatch):
  monkeypatch.setattr(data, '_FASHION_MNIST_IDX_DIR', tmp_path / 'no-debian-package')
  with pytest.raises(UserError, match='dataset-fashion-mnist') as error:
    data.load('fashion_mnist', data_dir=tmp_path)
  assert str(tmp_path) in str(error.value) and '\n' not in str(error.value)


def _encode(image: np.ndarray, image_format: str) -> bytes:
  encoded = io.BytesIO()
  Image.fromarray(image).save(encoded, format=image_format)
  return encoded.getvalue()


def _example(**features) -> bytes:
  """A serialized tf.train.Example as TFDS writes it: bytes features as bytes lists, ints as int64 lists."""
  def feature(value):
    if isinstance(value, bytes):
      return tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=[value]))
    return tf_feature_pb2.Feature(int64_list=tf_feature_pb2.Int64List(value=[int(value)]))

  return tf_example_pb2.Example(features=tf_feature_pb2.Features(
      feature={key: feature(value) for key, value in features.items()})).SerializeToString()


def _prepare_fake_tfds(name: str, data_dir, splits: dict) -> None:
  """Writes a prepared array_record `name` (metadata and shards, as TFDS lays them out) of `splits`' examples.

  `tfds.testing.mock_data` cannot stand in: its data source's `__getitems__` is broken in tfds 4.9.10.
  """
  builder = tfds.builder(name, data_dir=data_dir, file_format='array_record')
  builder.data_path.mkdir(parents=True)
  split_infos = []
  for split, examples in splits.items():
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path, dataset_name=name, split=split, filetype_suffix='array_record')
    writer = array_record_module.ArrayRecordWriter(
        str(template.sharded_filepath(shard_index=0, num_shards=1)), 'group_size:1')
    for example in examples:
      writer.write(example)
    writer.close()
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[len(examples)], num_bytes=0, filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.set_file_format('array_record')
  builder.info.write_to_directory(builder.data_path)


def test_cifar10_from_prepared_tfds_data(tmp_path):
  rng = np.random.default_rng(0)
  splits = {split: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10)
            for split, n in (('train', 12), ('test', 5))}
  _prepare_fake_tfds('cifar10', tmp_path, {
      split: [_example(id=b'%s_%05d' % (split.encode(), i), image=_encode(image, 'PNG'), label=label)
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


@pytest.mark.skipif(not data._FASHION_MNIST_IDX_DIR.is_dir(),
                    reason=f'{data._FASHION_MNIST_IDX_DIR} missing: apt-get install dataset-fashion-mnist')
def test_fashion_mnist_from_debian_idx_files(tmp_path):
  dataset = data.load('fashion_mnist', data_dir=tmp_path)
  assert dataset.train_images.shape == (60000, 28, 28, 1) and dataset.test_images.shape == (10000, 28, 28, 1)
  assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
  assert dataset.train_labels.shape == (60000,) and dataset.test_labels.shape == (10000,)
  np.testing.assert_array_equal(np.bincount(dataset.train_labels), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(dataset.test_labels), np.full(10, 1000))
  assert dataset.num_classes == 10 and dataset.augmentation == 'none'
  assert 60 < dataset.mean[0] < 90 and 80 < dataset.std[0] < 100  # Known: about 72.9 and 90.0.
