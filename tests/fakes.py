"""Small fake datasets laid out as the real ones are on disk: prepared TFDS array_record data (cifar10, cifar100,
imagenet2012), a tiny-imagenet-200/ folder, a user's folder or .npz pair. Shared by the data and paper-config tests."""
import io
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from PIL import Image
from tensorflow_datasets.proto import tf_example_pb2
from tensorflow_datasets.proto import tf_feature_pb2


def encode(image: np.ndarray, image_format: str) -> bytes:
  encoded = io.BytesIO()
  Image.fromarray(image).save(encoded, format=image_format)
  return encoded.getvalue()


def example(**features) -> bytes:
  """A serialized tf.train.Example as TFDS writes it: bytes features as bytes lists, ints as int64 lists."""
  def feature(value):
    if isinstance(value, bytes):
      return tf_feature_pb2.Feature(bytes_list=tf_feature_pb2.BytesList(value=[value]))
    return tf_feature_pb2.Feature(int64_list=tf_feature_pb2.Int64List(value=[int(value)]))

  return tf_example_pb2.Example(features=tf_feature_pb2.Features(
      feature={key: feature(value) for key, value in features.items()})).SerializeToString()


def prepare_fake_tfds(name: str, data_dir, splits: dict) -> None:
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
    for serialized in examples:
      writer.write(serialized)
    writer.close()
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[len(examples)], num_bytes=0, filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.set_file_format('array_record')
  builder.info.write_to_directory(builder.data_path)


def random_images(rng: np.random.Generator, count: int, shape) -> np.ndarray:
  return rng.integers(0, 256, (count, *shape), dtype=np.uint8)


def prepare_cifar(name: str, data_dir, sizes: dict, classes: int, seed: int = 0) -> None:
  """A prepared fake cifar10 or cifar100 of random 32-px PNGs: `sizes` {split: examples}, labels cycling."""
  rng = np.random.default_rng(seed)
  prepare_fake_tfds(name, data_dir, {
      split: [example(id=b'%s_%05d' % (split.encode(), i), image=encode(image, 'PNG'), label=i % classes,
                      **({'coarse_label': i % 20} if name == 'cifar100' else {}))
              for i, image in enumerate(random_images(rng, count, (32, 32, 3)))]
      for split, count in sizes.items()})


def prepare_imagenet(data_dir, train: int, validation: int, seed: int = 0) -> None:
  """A prepared fake imagenet2012 of random JPEGs of assorted sizes around 256 px."""
  rng = np.random.default_rng(seed)
  jpegs = lambda count: [encode(random_images(rng, 1, (240 + 7 * i, 300 - 9 * i, 3))[0], 'JPEG') for i in range(count)]
  prepare_fake_tfds('imagenet2012', data_dir, {
      'train': [example(file_name=b'n%08d_%d.JPEG' % (i, i), image=jpeg, label=(97 * i) % 1000)
                for i, jpeg in enumerate(jpegs(train))],
      'validation': [example(file_name=b'ILSVRC2012_val_%08d.JPEG' % i, image=jpeg, label=(31 * i) % 1000)
                     for i, jpeg in enumerate(jpegs(validation))]})


def prepare_tiny_imagenet(root: pathlib.Path, classes: int, validation: int, seed: int = 0) -> None:
  """A tiny-imagenet-200/ tree as the official zip unpacks, of random 64-px JPEGs: one training image per class
  (every class must have one), `validation` validation images."""
  rng = np.random.default_rng(seed)
  wnids = [f'n{i:08d}' for i in range(classes)]
  (root / 'val' / 'images').mkdir(parents=True)
  (root / 'wnids.txt').write_text('\n'.join(wnids) + '\n')
  for wnid, image in zip(wnids, random_images(rng, classes, (64, 64, 3))):
    (root / 'train' / wnid / 'images').mkdir(parents=True)
    Image.fromarray(image).save(root / 'train' / wnid / 'images' / f'{wnid}_0.JPEG')
  rows = []
  for i, image in enumerate(random_images(rng, validation, (64, 64, 3))):
    Image.fromarray(image).save(root / 'val' / 'images' / f'val_{i}.JPEG')
    rows.append(f'val_{i}.JPEG\t{wnids[(7 * i) % classes]}\t0\t0\t63\t63\n')
  (root / 'val' / 'val_annotations.txt').write_text(''.join(rows))


def write_image_folder(root: pathlib.Path, splits: dict) -> None:
  """A user's dataset as class sub-folders: `splits` {split: {class: [uint8 image, ...]}}, saved as PNGs."""
  for split, classes in splits.items():
    for name, images in classes.items():
      (root / split / name).mkdir(parents=True)
      for i, image in enumerate(images):
        Image.fromarray(image).save(root / split / name / f'{i}.png')
