"""Data parallelism, and optional FSDP-style parameter sharding, on a device mesh with `jax.jit` + NamedSharding.

The mesh has two axes: 'data' and 'fsdp'. A global batch is split over both (every device gets a slice); the
training state is replicated, or with FSDP each array's largest dimension divisible by the 'fsdp' size is split over
that axis. BatchNorm statistics and gradients are then reduced over the global batch by XLA, so a step means the
same on one device or many. On several hosts (`jax.distributed.initialize()` first) every host holds the whole
in-memory dataset and feeds the slice of each global batch that its devices own.
"""
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from aws_jax.errors import UserError

DATA, FSDP = 'data', 'fsdp'


def make_mesh(fsdp: int = 1) -> Mesh:
  """All devices of all hosts as a (data, fsdp) mesh; XLA decides the sharding of intermediates (Auto axes)."""
  count = jax.device_count()
  if fsdp < 1 or count % fsdp:
    raise UserError(f'--config.mesh.fsdp={fsdp} must divide the {count} devices')
  return jax.make_mesh((count // fsdp, fsdp), (DATA, FSDP), axis_types=(AxisType.Auto,) * 2)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """The batch axis split over every device: the leading axis, or (`stacked`: a batch per seed) the second."""
  return NamedSharding(mesh, PartitionSpec(*(None,) * stacked, (DATA, FSDP)))


def array_sharding(mesh: Mesh, shape) -> NamedSharding:
  """FSDP placement of one state array: its largest dimension divisible by the fsdp size is split, else replicated."""
  size = mesh.shape[FSDP]
  candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % size == 0 and shape[d] >= size]
  if size == 1 or not candidates:
    return replicated(mesh)
  spec = [None] * len(shape)
  spec[candidates[0]] = FSDP
  return NamedSharding(mesh, PartitionSpec(*spec))


def state_shardings(mesh: Mesh, state, fsdp: bool):
  """A tree of shardings for `state` (arrays or ShapeDtypeStructs): replicated, or FSDP-split."""
  return jax.tree.map(lambda x: array_sharding(mesh, x.shape) if fsdp else replicated(mesh), state)


def host_share(batch_size: int, processes: int) -> int:
  """The rows of a global batch of `batch_size` that each of `processes` hosts feeds."""
  if batch_size % processes:
    raise UserError(f'the batch size {batch_size} must be a multiple of the {processes} processes')
  return batch_size // processes


def host_rows(rows: np.ndarray, process: tuple[int, int]) -> np.ndarray:
  """Host `process` = (index, count)'s rows of a global batch's `rows` (along its last axis): those its devices own,
  [index, index + 1) × B / count."""
  index, count = process
  size = host_share(rows.shape[-1], count)
  return rows[..., index * size:(index + 1) * size]


def put(x, sharding: NamedSharding) -> jax.Array:
  """A global array from a value every host holds in full (the dataset, a fresh state, a batch's indices)."""
  if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def copy(tree):
  """`tree`'s arrays in buffers of their own, placed as they are (on any number of hosts): a step may donate them."""
  return jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False), tree)


def put_state(state, shardings):
  """`state` placed on the mesh as `shardings` say."""
  return jax.tree.map(put, state, shardings)
