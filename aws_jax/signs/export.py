"""A run's signed mask as a signs file: `export` reads a pruning round's checkpoint in a run directory."""
import os
from typing import Any

import numpy as np

from aws_jax import datasets
from aws_jax import rundir as rundir_lib
from aws_jax.errors import UserError
from aws_jax.signs.format import flatten, load, save, tree_mismatch, unflatten

PyTree = Any


def abstract_params(model_name: str, num_classes: int, image_shape) -> PyTree:
  """The shapes of a model's params (as train.init_variables makes them, without importing the data pipeline)."""
  import jax  # pylint: disable=import-outside-toplevel
  from aws_jax import models  # pylint: disable=import-outside-toplevel
  model = models.create_model(model_name, num_classes)
  image = jax.ShapeDtypeStruct((1, *image_shape), 'float32')
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), image)['params']


def save_with_pruning_rules(out: str, signed: dict, metadata: dict, exclude=None) -> dict:
  """Saves `signed` with `pruning`'s rules for it (`exclude`: from pruning, default the classifier); returns the
  metadata as written."""
  from aws_jax import pruning  # pylint: disable=import-outside-toplevel
  exclude = pruning.DEFAULT_EXCLUDE if exclude is None else exclude
  save(out, signed, prunable=pruning.prunable_leaves(signed, exclude), is_norm=pruning.norm_leaves(signed),
       metadata=metadata)
  return load(out)[1]


def export(config, workdir: str, round_index: int | None, out: str) -> dict:
  """Writes the signs of pruning round `round_index` (None: the last saved) of the run in `workdir`; its metadata."""
  directory = rundir_lib.RunDir(workdir).checkpoints(rundir_lib.PRUNE)
  saved = rundir_lib.complete_steps(directory)  # directory names only: answered before orbax and JAX load
  if not saved:
    raise UserError(f'{workdir} holds no complete pruning round ({directory} is empty or missing); check --workdir, '
                    f'or run the pruning stage first (python -m aws_jax.main --config.stage=prune with its config)')
  round_index = saved[-1] if round_index is None else round_index
  if round_index not in saved:
    raise UserError(f'pruning round {round_index} is not saved in {directory} (saved: '
                    f'{", ".join(map(str, saved))}); choose --round among them, or run the pruning stage further')
  from aws_jax.checkpoints import Checkpoints  # pylint: disable=import-outside-toplevel
  with Checkpoints(directory) as checkpoints:
    summary = checkpoints.summary(round_index)
  signed = restore_signs(os.path.join(directory, str(round_index), 'state'))
  num_classes = signed['classifier']['kernel'].shape[-1]
  image_shape = datasets.facts(config.dataset).image_shape
  mismatch = tree_mismatch(signed, abstract_params(config.model, num_classes, image_shape))
  if mismatch:
    raise UserError(f'{directory}/{round_index} is not a --config.model={config.model} checkpoint ({mismatch}); '
                    f'export with the config that wrote it')
  metadata = {'model': config.model, 'num_classes': num_classes, 'image_shape': list(image_shape),
              'dataset': config.dataset, 'method': summary['method'], 'round': summary['round']}
  return save_with_pruning_rules(out, signed, metadata, config.prune.exclude)


def restore_signs(state_directory: str) -> dict:
  """The 'signs' item of a `Checkpoints` state, alone, as numpy arrays (the rest is never read)."""
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  checkpointer = ocp.PyTreeCheckpointer()
  stored = checkpointer.metadata(state_directory).item_metadata.tree['signs']
  item = {'signs': jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), stored)}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = checkpointer.restore(state_directory, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))
  return unflatten({path: np.asarray(s, np.int8) for path, s in flatten(restored['signs']).items()})
