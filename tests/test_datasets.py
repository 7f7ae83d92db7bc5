"""aws_jax.datasets: the facts config, signs and data read agree with the data, and cost no heavy import."""
import subprocess
import sys

import pytest

from aws_jax import config as config_lib
from aws_jax import data as data_lib
from aws_jax import datasets
from aws_jax.errors import UserError
from conftest import SUBPROCESS_TIMEOUT


def test_facts_cover_every_dataset_and_match_the_loaded_digits():
  assert all(facts.augmentation in datasets.AUGMENTATIONS and facts.files in datasets.FILES
             for facts in datasets.FACTS.values())
  assert [name for name, facts in datasets.FACTS.items() if facts.streamed] == ['imagenet2012']
  digits = data_lib.load('digits')
  facts = datasets.FACTS['digits']
  assert (digits.image_shape, digits.num_classes, digits.num_train, digits.num_test, digits.augmentation,
          digits.in_memory) == (facts.image_shape, facts.num_classes, facts.num_train, facts.num_test,
                                facts.augmentation, not facts.streamed)


def test_config_validation_checks_the_dataset_on_one_line(tmp_path):
  """An unknown dataset or a user's dataset without its files, and error barriers on a dataset that streams, are
  refused by the config's validation (before anything loads or trains)."""
  config = config_lib.base_config()
  for name, fragment in (('svhn', 'is not one of digits'), (f'folder:{tmp_path}', f'{tmp_path} has no train'),
                         (f'npz:{tmp_path}', 'has no train.npz')):
    config.dataset = name
    with pytest.raises(UserError, match=fragment) as error:
      config_lib.validate(config)
    assert '\n' not in str(error.value)
  (tmp_path / 'train').mkdir()
  (tmp_path / 'test').mkdir()
  config.dataset = f'folder:{tmp_path}'
  config_lib.validate(config)
  config.dataset = 'imagenet2012'
  config.barrier.psi_reset = False
  asked = '--config.barrier.lmc=False --config.barrier.sgd_noise=False$'  # psi_reset is off already
  with pytest.raises(UserError, match=f'streams from disk.*{asked}'):
    config_lib.validate(config)
  config.barrier.update({'lmc': False, 'sgd_noise': False})
  config_lib.validate(config)


def test_the_light_modules_import_neither_jax_nor_tfds():
  light = 'aws_jax.datasets, aws_jax.config, aws_jax.cli, aws_jax.rundir, aws_jax.signs, aws_jax.barrier'
  probe = (f'import sys, {light}; heavy = [m for m in ("jax", "tensorflow_datasets", "flax", "matplotlib") '
           f'if m in sys.modules]; print(heavy); sys.exit(bool(heavy))')
  result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
  assert result.returncode == 0, result.stdout + result.stderr
