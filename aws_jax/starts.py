"""Final-training starts: what a network trained from a pruning round's signed mask starts as.

Each start is one registered entry: a pure function of `StartInputs` (the fresh initialisation of the final
training's seed, the source's signed mask, the trained source network where one exists) that returns the initial
training state, and what it needs. Config validation, the final stage, plots and the study read `STARTS`; adding a
start is one `register` call plus its test on a hand-made tree. Light to import (JAX loads when a start is built).
"""
import dataclasses
from typing import Any, Callable

PyTree = Any


@dataclasses.dataclass(frozen=True)
class StartInputs:
  """What a start is built from. `fresh` is a dense TrainState initialised from the final training's seed."""
  fresh: Any
  signed: PyTree               # s ∈ {−1, 0, +1} of the source round (or a signs file)
  source: Any | None           # the trained source network's TrainState; None when the start comes from a signs file
  key: Any                     # a PRNG key of the final training's seed, for random draws
  is_norm: PyTree              # True on normalization-layer leaves (ψ)
  prunable: PyTree             # True on prunable kernels


@dataclasses.dataclass(frozen=True)
class Start:
  name: str
  build: Callable[[StartInputs], Any]  # -> the initial TrainState (its optimizer state is made afresh by the caller)
  description: str
  needs_source: bool = False           # the trained source network itself: not available from a signs file
  color: str = 'C7'                    # in figures


STARTS: dict[str, Start] = {}


def register(start: Start) -> Start:
  STARTS[start.name] = start
  return start


def get(name: str) -> Start:
  return STARTS[name]


def _pruning():
  from aws_jax import pruning  # pylint: disable=import-outside-toplevel  # JAX: loaded when a start is built
  return pruning


def _signed(inputs: StartInputs):
  pruning = _pruning()
  params = pruning.signed_mask_transfer(inputs.fresh.params, inputs.signed, inputs.is_norm)
  return inputs.fresh.replace(params=params, mask=pruning.mask_from_signs(inputs.signed))


def _signed_keep_norm(inputs: StartInputs):
  state = _signed(inputs)
  params = _pruning().reset_norm(state.params, inputs.source.params, inputs.is_norm)  # ψ of the trained source
  return state.replace(params=params)


def _random_signs(inputs: StartInputs):
  pruning = _pruning()
  signed = pruning.random_signs(inputs.key, inputs.signed, inputs.is_norm)
  return _signed(dataclasses.replace(inputs, signed=signed))


def _mask(inputs: StartInputs):
  pruning = _pruning()
  mask = pruning.mask_from_signs(inputs.signed)
  return inputs.fresh.replace(params=pruning.apply_mask(inputs.fresh.params, mask), mask=mask)


def _random_mask(inputs: StartInputs):
  pruning = _pruning()
  mask = pruning.random_mask_like(inputs.key, pruning.mask_from_signs(inputs.signed), inputs.prunable)
  return inputs.fresh.replace(params=pruning.apply_mask(inputs.fresh.params, mask), mask=mask)


def _retrain(inputs: StartInputs):
  source = inputs.source
  return inputs.fresh.replace(params=source.params, batch_stats=source.batch_stats, mask=source.mask,
                              init_params=source.init_params)


register(Start('signed', _signed, '|w_fresh| · s: the signed mask on fresh magnitudes, ψ and statistics fresh',
               color='C0'))
register(Start('mask', _mask, 'the fresh weights on the mask s ≠ 0 (fresh signs)', color='C1'))
register(Start('retrain', _retrain, 'the trained source network itself, trained on (its statistics kept)',
               needs_source=True, color='C2'))
register(Start('random_signs', _random_signs, 'as signed, with uniform random ±1 for s', color='C3'))
register(Start('random_mask', _random_mask, 'the fresh weights on a random mask with the per-layer counts of s',
               color='C4'))
register(Start('dense', lambda inputs: inputs.fresh, 'the fresh dense network', color='C5'))
register(Start('signed_keep_norm', _signed_keep_norm, 'as signed, with the trained source\'s ψ (normalization scale '
               'and shift); running statistics fresh', needs_source=True, color='C6'))
