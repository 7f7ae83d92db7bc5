"""Linear mode connectivity, the maths only: the straight path between two networks, BatchNorm statistics
re-estimated along it, the error at its points, and its barrier (`measure`).

`aws_jax.barrier.NAME` is `aws_jax.barrier.measure.NAME` (`barrier.error_curve`, `barrier.path_data`, ...), loaded
on first use: importing this package, as `python -m aws_jax.barrier` does, costs no JAX, so a bad command is
answered within a second. This package reads no checkpoint and writes no file: `python -m aws_jax.barrier` (its
flags, `__main__`) and `aws_jax.barrier_command` (checkpoints, presets, JSON and PNG) build on it, never the reverse.
"""
import importlib


def __getattr__(name: str):
  if name.startswith('__'):
    raise AttributeError(name)
  return getattr(importlib.import_module('aws_jax.barrier.measure'), name)
