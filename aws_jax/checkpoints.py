"""Numbered orbax checkpoints of a TrainState, each with the signed mask and a JSON summary beside it."""
import os

import jax
import orbax.checkpoint as ocp

from aws_jax import pruning
from aws_jax.errors import UserError
from aws_jax.train import TrainState


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """orbax's pytree handler, each array written whole by the devices of one replica. Its default, replica-parallel
  saving, splits every replicated array among its copies, one program compiled per array shape and device (168 at a
  small_cnn's first save on 8 devices) to save a few kilobytes each in parallel."""
  return ocp.PyTreeCheckpointHandler(type_handler_registry=ocp.type_handlers.create_type_handler_registry(
      (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False))))


class Checkpoints:
  """The checkpoints in one directory, numbered by round (pruning stage) or epoch (final training). The directory is
  made by the first `save`: looking for checkpoints (of a network never trained) leaves no empty directory behind.
  A context manager: `with Checkpoints(directory) as checkpoints:` closes it on leaving."""

  def __init__(self, directory: str, max_to_keep: int | None = None):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=False,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
        'state': _state_handler(), 'summary': ocp.JsonCheckpointHandler()})

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: TrainState, summary: dict) -> None:
    """Writes atomically: a checkpoint killed half-way is never seen as complete, and a failed write (a full disk,
    a directory turned read-only) raises UserError with the checkpoints already there intact."""
    item = {'state': state, 'signs': pruning.signs(state.params, state.mask)}
    try:
      os.makedirs(self.directory, exist_ok=True)
      self._manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(item),
                                                       summary=ocp.args.JsonSave(summary)))
      self._manager.wait_until_finished()
    except OSError as e:
      latest = self.latest()
      raise UserError(f'could not write checkpoint {step} in {self.directory} ({e.strerror or e}); free space or '
                      f'fix the directory and rerun the same command: it resumes from '
                      f'{"checkpoint " + str(latest) if latest is not None else "the start"}, which is intact') from e

  def summary(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(summary=ocp.args.JsonRestore()))['summary']

  def restore(self, step: int, template: TrainState) -> TrainState:
    """The state saved at `step`, shaped and placed like `template` (arrays or ShapeDtypeStructs with shardings).

    A checkpoint written on any number of devices or hosts restores onto the template's shardings (the first
    local device where the template has none).
    """
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding or default),
                            jax.tree.map(ocp.utils.to_shape_dtype_struct, template))
    abstract = {'state': template, 'signs': jax.tree.map(lambda _: ocp.PLACEHOLDER, template.mask)}  # signs unread
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))))['state']
    except (ValueError, KeyError, TypeError) as e:
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise UserError(f'checkpoint {self.directory}/{step} does not match this model and config '
                      f'({first_line[:200]}); run with the config that wrote it, or use another --workdir') from e
    return restored['state']

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> 'Checkpoints':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
