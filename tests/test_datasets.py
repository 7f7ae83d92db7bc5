"""aws_jax.datasets: the facts config, signs and data read agree with the data, and cost no heavy import."""
import subprocess
import sys

from aws_jax import config as config_lib
from aws_jax import data as data_lib
from aws_jax import datasets
from conftest import SUBPROCESS_TIMEOUT


def test_facts_cover_every_dataset_and_match_the_loaded_digits():
  assert datasets.DATASETS == config_lib.DATASETS
  assert all(facts.augmentation in datasets.AUGMENTATIONS for facts in datasets.FACTS.values())
  digits = data_lib.load('digits')
  facts = datasets.FACTS['digits']
  assert (digits.image_shape, digits.num_classes, digits.augmentation) == (facts.image_shape, facts.num_classes,
                                                                           facts.augmentation)


def test_the_light_modules_import_neither_jax_nor_tfds():
  light = 'aws_jax.datasets, aws_jax.config, aws_jax.cli, aws_jax.rundir, aws_jax.signs, aws_jax.barrier'
  probe = (f'import sys, {light}; heavy = [m for m in ("jax", "tensorflow_datasets", "flax", "matplotlib") '
           f'if m in sys.modules]; print(heavy); sys.exit(bool(heavy))')
  result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 0, result.stdout + result.stderr
