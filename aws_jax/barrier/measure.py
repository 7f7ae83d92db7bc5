"""Linear mode connectivity: error along the straight path between two networks, and its barrier.

θ(α) = α·θ_a + (1 − α)·θ_b over every parameter (normalization layers included), for α = 0, …, 1. Before θ(α) is
evaluated its BatchNorm statistics are estimated again in training mode (`reestimate_batch_stats`): 'average', the
plain average of un-augmented training batches' statistics; or 'authors', as the reference's
calculate_error_barrier.py does it, from fresh statistics (mean 0, variance 1) updated with momentum 0.1 over
augmented, shuffled training batches, an exponential average weighted to the last ~20 batches. The curve is
error(α) − (error(0) + error(1)) / 2 and the error barrier its maximum (docs/method.md, "Analysis"). All points of a
path are one jitted computation, vmapped over chunks of α (all of them on an accelerator, halved if memory runs out;
one at a time on CPU, see `default_chunk`). What reads checkpoints and writes files is `aws_jax.barrier_command`'s.
"""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from aws_jax import augment, conv, pruning, train
from aws_jax.errors import UserError

PyTree = Any
BN_PHASE = 2_000_000  # data-order phase of the batches BatchNorm statistics are re-estimated on
REFERENCE_MOMENTUM = 0.1  # PyTorch's BatchNorm default: new = 0.9·old + 0.1·batch's


def interpolate(tree_a: PyTree, tree_b: PyTree, alpha) -> PyTree:
  """α·a + (1 − α)·b leaf by leaf: exactly `tree_b` at α = 0 and exactly `tree_a` at α = 1."""
  return jax.tree.map(lambda a, b: (alpha * a + (1 - alpha) * b).astype(a.dtype), tree_a, tree_b)


def reestimate_batch_stats(model, params: PyTree, batch_stats: PyTree, images, batches, mean, std, *,
                           method: str = 'average', augmentation: str = 'none', seed: int = 0) -> PyTree:
  """BatchNorm statistics of `params` estimated again on training batches, the model in training mode.

  `batches` is a (steps, batch) array of indices into `images` (raw; augmented as `augmentation` says for 'authors',
  then normalised with `mean`, `std`). `method` 'average': the plain average of the batches' statistics (PyTorch's
  reset with `momentum=None`). 'authors': from fresh statistics (mean 0, variance 1), each batch updates them to
  0.9·old + 0.1·batch's (PyTorch's momentum 0.1), as the reference's barrier script does. Either way the modules' own
  momentum does not matter, and dropout (drop-connect included) is off: no dropout RNG is given. The augmentation
  draws from `seed` and the step, so the result is a function of its arguments. A tree without statistics (a
  LayerNorm model) comes back unchanged.
  """
  if not jax.tree.leaves(batch_stats):
    return batch_stats
  if method not in ('average', 'authors'):
    raise ValueError(f"method must be 'average' or 'authors', not {method!r}")
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)

  def update_from_zeros(step, indices):
    """Flax updates a statistic to m·old + (1 − m)·batch's: from old = 0 that is (1 − m)·batch's; m is its slope."""
    x = images[indices]
    if method == 'authors':
      x = augment.augment(jax.random.fold_in(jax.random.PRNGKey(seed), step), x, augmentation)
    x = augment.normalize(x, mean, std)

    def updated(stats):
      return model.apply({'params': params, 'batch_stats': stats}, x, train=True, mutable=['batch_stats'])[1][
          'batch_stats']

    return jax.jvp(updated, (zeros,), (jax.tree.map(jnp.ones_like, zeros),))

  def accumulate(stats, step_and_indices):
    new, momentum = update_from_zeros(*step_and_indices)
    if method == 'average':
      return jax.tree.map(jnp.add, stats, new), momentum
    return jax.tree.map(lambda old, n, m: (1 - REFERENCE_MOMENTUM) * old + REFERENCE_MOMENTUM * n / (1 - m), stats,
                        new, momentum), momentum

  steps = batches.shape[0]
  start = zeros if method == 'average' else fresh_batch_stats(batch_stats)
  stats, momentum = jax.lax.scan(accumulate, start, (jnp.arange(steps), batches))
  if method == 'authors':
    return stats
  return jax.tree.map(lambda t, m: t / ((1 - m[0]) * steps), stats, momentum)


def fresh_batch_stats(batch_stats: PyTree) -> PyTree:
  """Statistics as a new BatchNorm holds them: every 'mean' 0, every 'var' 1."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.full_like(leaf, 1.0 if path[-1].key == 'var' else 0.0), batch_stats)


@flax.struct.dataclass
class PathData:
  """What the points of a path are measured on: BatchNorm batches of the training set, the test set in batches."""
  train_images: jax.Array
  bn_batches: jax.Array    # (steps, batch) training indices; 0 steps: interpolate the statistics instead
  test_images: jax.Array
  test_labels: jax.Array
  test_indices: jax.Array  # (batches, eval_batch) test indices, the last batch padded ...
  test_valid: jax.Array    # ... and its padding marked 0
  mean: jax.Array
  std: jax.Array
  reestimate: str = flax.struct.field(pytree_node=False, default='average')  # `reestimate_batch_stats`' method
  augmentation: str = flax.struct.field(pytree_node=False, default='none')   # of the training images ('authors')


def bn_batch_indices(n: int, batch_size: int, count: int) -> np.ndarray:
  """(count, batch_size) shuffled training indices; count = -1 is one epoch (every full batch), more wraps epochs."""
  per_epoch = n // batch_size
  count = per_epoch if count == -1 else count
  epochs = [train.epoch_order(0, BN_PHASE, epoch, n, batch_size) for epoch in range(-(-count // per_epoch))]
  return np.concatenate(epochs)[:count] if epochs else np.zeros((0, batch_size), np.int32)


def path_data(train_images, test_images, test_labels, mean, std, *, batch_size: int, bn_batches: int,
              eval_batch_size: int, reestimate: str = 'average', augmentation: str = 'none') -> PathData:
  """PathData with `bn_batches` batches of `batch_size` for BatchNorm (-1: one epoch, 0: none), re-estimated as
  `reestimate` says ('average' or 'authors', with the dataset's `augmentation`)."""
  n_test = test_labels.shape[0]
  indices, valid = map(np.stack, zip(*train.eval_batches(n_test, min(eval_batch_size, n_test))))
  return PathData(train_images=jnp.asarray(train_images),
                  bn_batches=jnp.asarray(bn_batch_indices(train_images.shape[0], batch_size, bn_batches)),
                  test_images=jnp.asarray(test_images), test_labels=jnp.asarray(test_labels),
                  test_indices=jnp.asarray(indices), test_valid=jnp.asarray(valid),
                  mean=jnp.asarray(mean, jnp.float32), std=jnp.asarray(std, jnp.float32), reestimate=reestimate,
                  augmentation=augmentation)


def _path_metrics(model, alphas, variables_a, variables_b, data: PathData, chunk: int, impl: str):
  """(test loss sum, correct count) of θ(α) for each of `alphas`, vmapped over `chunk` points at a time, traced with
the convolutions `impl` (`conv.IMPLS`)."""
  with conv.implementation(impl):
    return _path_points(model, alphas, variables_a, variables_b, data, chunk)


def _path_points(model, alphas, variables_a, variables_b, data: PathData, chunk: int):
  eval_step = train.make_eval_step(model, data.mean, data.std)

  def at(alpha):
    params = interpolate(variables_a['params'], variables_b['params'], alpha)
    batch_stats = interpolate(variables_a['batch_stats'], variables_b['batch_stats'], alpha)
    if data.bn_batches.shape[0]:
      batch_stats = reestimate_batch_stats(model, params, batch_stats, data.train_images, data.bn_batches,
                                           data.mean, data.std, method=data.reestimate,
                                           augmentation=data.augmentation)

    def accumulate(totals, batch):
      metrics = eval_step(params, batch_stats, data.test_images, data.test_labels, *batch)
      return jax.tree.map(jnp.add, totals, metrics), None

    totals, _ = jax.lax.scan(accumulate, (jnp.zeros(()), jnp.zeros(())), (data.test_indices, data.test_valid))
    return totals

  return jax.lax.map(at, alphas, batch_size=chunk)


@functools.cache
def _jitted_path_metrics():
  """`_path_metrics` jitted once, with the backend's compiler options (known only once JAX has started)."""
  return jax.jit(_path_metrics, static_argnums=(0, 5, 6), compiler_options=conv.compiler_options())


def default_chunk(points: int) -> int:
  """All points at once on an accelerator; one at a time on CPU.

  On CPU, a convolution vmapped over its weights is a grouped convolution in XLA and a loop over the points in
  oneDNN: for ResNet-20, 11 points vectorised ran 5.5× slower, in 9× the memory, than one after another; for
  small_cnn on Fashion-MNIST (the `:paper` preset's ψ-reset path, 4 points), 1.3–1.6× slower, re-estimation and
  test evaluation alike, under either library.
  """
  return 1 if jax.default_backend() == 'cpu' else points


def path_metrics(model, variables_a, variables_b, data: PathData, alphas, chunk: int = 0, impl: str = 'auto'):
  """(test loss sums, correct counts) along `alphas`, in one jitted call vectorised over `chunk` points at a time.

  `chunk` 0 is `default_chunk`; if the device runs out of memory the chunk is halved and the call repeated.
  """
  alphas = jnp.asarray(alphas, jnp.float32)
  chunk = min(chunk or default_chunk(alphas.size), alphas.size)
  try:
    loss, correct = jax.device_get(_jitted_path_metrics()(model, alphas, variables_a, variables_b, data, chunk,
                                                          impl))
  except jax.errors.JaxRuntimeError as e:
    if 'RESOURCE_EXHAUSTED' not in str(e) or chunk == 1:
      raise
    return path_metrics(model, variables_a, variables_b, data, alphas, chunk // 2, impl)
  return np.asarray(loss, np.float64), np.asarray(correct, np.float64)


def excess_error(test_error) -> np.ndarray:
  """The curve: error(α) − (error(0) + error(1)) / 2, `test_error` running from α = 0 to 1."""
  test_error = np.asarray(test_error, np.float64)
  return test_error - (test_error[0] + test_error[-1]) / 2


def barrier(test_error) -> float:
  """The error barrier: the curve's maximum (the same whether given the errors or the curve itself)."""
  return float(np.max(excess_error(test_error)))


def error_curve(model, variables_a, variables_b, data: PathData, points: int = 11, chunk: int = 0,
                end: tuple[float, float] | None = None, impl: str = 'auto') -> dict:
  """Test error (%) and loss of θ(α) = α·θ_a + (1 − α)·θ_b for α = 0, 1/(points−1), …, 1, the curve, the barrier.

  `variables_*` are Flax variables, {'params': …, 'batch_stats': …} (statistics may be {}); they must match
  (`check_compatible`). Error = 100 − test accuracy in %. `end`: (test loss sum, correct count) at α = 1 where the
  caller has already measured network a as this path would (its statistics re-estimated on the same batches).
  """
  alphas = np.linspace(0, 1, points)
  loss, correct = path_metrics(model, variables_a, variables_b, data, alphas[:-1] if end else alphas, chunk, impl)
  if end:
    loss, correct = np.append(loss, end[0]), np.append(correct, end[1])
  n = data.test_labels.shape[0]
  test_error = 100 * (1 - correct / n)
  return {'alphas': alphas.round(6).tolist(), 'test_error': test_error.tolist(), 'test_loss': (loss / n).tolist(),
          'curve': excess_error(test_error).tolist(), 'barrier': barrier(test_error)}


def check_compatible(variables_a, variables_b, mask_a=None, mask_b=None) -> None:
  """Raises UserError unless both networks have the same tree, shapes and dtypes (and the same mask, if given)."""
  flat_a = traverse_util.flatten_dict(flax.core.unfreeze(variables_a), sep='/')
  flat_b = traverse_util.flatten_dict(flax.core.unfreeze(variables_b), sep='/')
  if flat_a.keys() != flat_b.keys():
    only = sorted(flat_a.keys() ^ flat_b.keys())[0]
    side = 'a' if only in flat_a else 'b'
    raise UserError(f'the two networks have different architectures: only {side} has {only!r} '
                    f'({len(flat_a)} vs {len(flat_b)} arrays)')
  for path, leaf in flat_a.items():
    other = flat_b[path]
    if leaf.shape != other.shape or leaf.dtype != other.dtype:
      raise UserError(f'the two networks have different architectures: {path!r} is {leaf.dtype}{list(leaf.shape)} '
                      f'in a, {other.dtype}{list(other.shape)} in b')
  if mask_a is not None:
    differing = sum(int(np.sum(np.asarray(x) != np.asarray(y)))
                    for x, y in zip(jax.tree.leaves(mask_a), jax.tree.leaves(mask_b)))
    if differing:
      alive = [sum(int(np.sum(m)) for m in jax.tree.leaves(mask)) for mask in (mask_a, mask_b)]
      raise UserError(f'the two networks have different masks ({differing} weights differ; {alive[0]} vs '
                      f'{alive[1]} alive): compare networks that share a mask')


def variables(state: train.TrainState) -> dict:
  """The Flax variables of a training state."""
  return {'params': state.params, 'batch_stats': state.batch_stats}


def psi_reset_curve(model, state: train.TrainState, is_norm: PyTree, data: PathData, points: int = 11,
                    chunk: int = 0, end: tuple[float, float] | None = None, impl: str = 'auto') -> dict:
  """The path from the network with ψ reset to its initial value (α = 0) to the network itself (α = 1; `end`, its
  test loss sum and correct count, where already measured)."""
  reset = pruning.reset_norm(state.params, state.init_params, is_norm)
  return error_curve(model, variables(state), {'params': reset, 'batch_stats': state.batch_stats}, data, points,
                     chunk, end, impl)

