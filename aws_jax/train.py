"""The training step and the small pure pieces around it: state, optimizer, schedules, evaluation."""
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from aws_jax import augment, pruning


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries from step to step; a plain pytree (checkpointable, vmappable)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  mask: Any
  init_params: Any
  rng: jax.Array


def schedule(kind: str, lr: float, total_steps: int) -> optax.Schedule:
  """'constant' (pruning stage), 'step' (÷10 at 50 % and 75 %) or 'cosine' (down to lr·1e-3)."""
  if kind == 'constant':
    return optax.constant_schedule(lr)
  if kind == 'step':
    return optax.piecewise_constant_schedule(lr, {total_steps // 2: 0.1, (3 * total_steps) // 4: 0.1})
  if kind == 'cosine':
    return optax.cosine_decay_schedule(lr, total_steps, alpha=1e-3)
  raise ValueError(f'unknown schedule {kind!r}')


def make_optimizer(name: str, learning_rate: optax.ScalarOrSchedule, momentum: float, weight_decay: float,
                   decayed: Any = None) -> optax.GradientTransformation:
  """SGD with momentum, or Adam, both with L2 weight decay added to the gradient (as PyTorch does); `decayed`, a
  bool pytree over the params (None: every leaf), says which leaves the decay reaches."""
  if name == 'sgd':
    base = optax.sgd(learning_rate, momentum=momentum)
  elif name == 'adam':
    base = optax.adam(learning_rate)
  else:
    raise ValueError(f'unknown optimizer {name!r}')
  return optax.chain(optax.add_decayed_weights(weight_decay, mask=decayed), base)


def init_variables(model: nn.Module, key: jax.Array, image_shape) -> tuple[Any, Any]:
  """Fresh (params, batch_stats) for one image of `image_shape` (H, W, C)."""
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return variables['params'], variables.get('batch_stats', {})


def init_optimizer(tx: optax.GradientTransformation, params):
  """`tx`'s fresh state for `params`, made in one program (not one per leaf and operation)."""
  return jax.jit(tx.init)(params)


def create_state(params, batch_stats, mask, init_params, tx: optax.GradientTransformation,
                 rng: jax.Array) -> TrainState:
  """A state at step 0 with a fresh optimizer."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=init_optimizer(tx, params), mask=mask, init_params=init_params, rng=rng)


def cast(tree, dtype):
  """Floating-point leaves of `tree` in `dtype` (a no-op for float32 trees and float32)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, **kwargs) -> Callable:
  """Builds `train_step(state, images, labels, indices) -> (state, metrics)` over a device-resident dataset.

  `images`/`labels` are the whole training set; `indices` picks this step's batch, which then goes through the
  step of `make_batch_step(model, tx, **kwargs)`.
  """
  batch_step = make_batch_step(model, tx, **kwargs)
  return lambda state, images, labels, indices: batch_step(state, images[indices], labels[indices])


def make_batch_step(model: nn.Module, tx: optax.GradientTransformation, *, aws: bool, is_norm,
                    augmentation: str, mean, std, compute_dtype=jnp.float32) -> Callable:
  """Builds `batch_step(state, images, labels) -> (state, metrics)` for one batch of raw images.

  The images are augmented (`augmentation`) and normalised inside the step. With `aws`, one
  α ~ U[0, 1) drawn from the state's key blends every normalization layer's ψ toward its initial value for this
  step's forward pass; without it, the step is plain LRR. Gradients and updates are masked, so pruned weights
  stay exactly zero. `compute_dtype` (e.g. bfloat16 on TPU/GPU) is what the forward and backward passes run in;
  params, optimizer state and BatchNorm statistics stay float32. Pure: no Python side effects, so it can be
  jitted and vmapped.
  """
  def batch_step(state: TrainState, images, labels):
    rng, augment_key, alpha_key, dropout_key = jax.random.split(state.rng, 4)
    x = augment.normalize(augment.augment(augment_key, images, augmentation), mean, std)
    y = labels
    alpha = jax.random.uniform(alpha_key) if aws else 0.0

    def loss_fn(params):
      if aws:
        params = pruning.interpolate_norm(params, state.init_params, alpha, is_norm)
      logits, updates = model.apply({'params': cast(params, compute_dtype), 'batch_stats': state.batch_stats},
                                    x.astype(compute_dtype), train=True, mutable=['batch_stats'],
                                    rngs={'dropout': dropout_key})
      logits = logits.astype(jnp.float32)
      return cross_entropy(logits, y).mean(), (logits, cast(updates['batch_stats'], jnp.float32))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = pruning.apply_mask(grads, state.mask)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = pruning.apply_mask(optax.apply_updates(state.params, updates), state.mask)
    metrics = {'loss': loss, 'correct': jnp.sum(jnp.argmax(logits, -1) == y), 'alpha': alpha}
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                         rng=rng), metrics

  return batch_step


def make_eval_step(model: nn.Module, mean, std, compute_dtype=jnp.float32) -> Callable:
  """Builds `eval_step(params, batch_stats, images, labels, indices, valid) -> (loss_sum, correct)`."""
  def eval_step(params, batch_stats, images, labels, indices, valid):
    x = augment.normalize(images[indices], mean, std).astype(compute_dtype)
    logits = model.apply({'params': cast(params, compute_dtype), 'batch_stats': batch_stats}, x,
                         train=False).astype(jnp.float32)
    y = labels[indices]
    loss = jnp.sum(cross_entropy(logits, y) * valid)
    correct = jnp.sum((jnp.argmax(logits, -1) == y) * valid)
    return loss, correct

  return eval_step


def eval_batches(n: int, batch_size: int):
  """(indices, valid) pairs covering 0..n-1 in fixed-size batches; the last is padded with invalid rows."""
  for start in range(0, n, batch_size):
    indices = np.arange(start, start + batch_size)
    valid = indices < n
    yield np.where(valid, indices, 0).astype(np.int32), valid.astype(np.float32)


def evaluate(eval_step: Callable, params, batch_stats, images, labels, batch_size: int,
             put_batch: Callable = lambda x: x) -> dict:
  """Mean loss and accuracy over a whole (device-resident) split; `put_batch` places each batch's indices."""
  n = labels.shape[0]
  totals = [eval_step(params, batch_stats, images, labels, put_batch(idx), put_batch(valid))
            for idx, valid in eval_batches(n, batch_size)]
  loss, correct = np.sum(np.asarray(jax.device_get(totals)), axis=0)
  return {'loss': float(loss / n), 'accuracy': float(correct / n)}


def epoch_order(seed: int, phase: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
  """The (steps, batch_size) example indices of one epoch; a function of (seed, phase, epoch) alone."""
  order = np.random.default_rng((seed, phase, epoch)).permutation(n)
  steps = n // batch_size
  return order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)
