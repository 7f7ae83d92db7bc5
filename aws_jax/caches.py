"""aws_jax's caches on disk, under `$AWS_JAX_CACHE` (default ~/.cache/aws_jax): the compiled oneDNN convolutions
(aws_jax/onednn.py) and, in `xla/`, JAX's persistent compilation cache, from which a rerun, a resume or the next
command on the same config and machine loads its compiled programs instead of compiling them again.

JAX keys each entry by the program, the compiler's options and flags, the jaxlib version and the devices (on a CPU,
its instruction sets too), so a home directory shared by machines of different kinds keeps their entries apart.
"""
import os
import pathlib
import sys

# The persistent compilation cache's size; beyond it the least recently used entries are deleted.
XLA_CACHE_BYTES = 2 << 30
# Programs that compile faster are not written (JAX's default, 1 s, leaves out a small network's train step on a CPU).
XLA_CACHE_MIN_COMPILE_SECONDS = 0.2


def directory() -> pathlib.Path:
  return pathlib.Path(os.environ.get('AWS_JAX_CACHE', pathlib.Path.home() / '.cache' / 'aws_jax'))


def use_compilation_cache() -> str | None:
  """Turns JAX's persistent compilation cache on in `directory()/xla`, for this process and those it starts (through
  the environment); returns that directory. None, changing nothing, where `JAX_COMPILATION_CACHE_DIR` is set (it
  decides: a directory, or empty for no cache) or the directory can't be made writable (programs compile as
  without a cache). Call it before the first compilation."""
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return None
  path = directory() / 'xla'
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None
  if not os.access(path, os.W_OK | os.X_OK):
    return None
  settings = {'jax_compilation_cache_dir': str(path), 'jax_persistent_cache_min_compile_time_secs':
              XLA_CACHE_MIN_COMPILE_SECONDS}
  try:
    import filelock  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    settings['jax_compilation_cache_max_size'] = XLA_CACHE_BYTES
  except ImportError:  # a dependency of aws_jax, but without it JAX refuses to compile under a size limit
    pass
  for name, value in settings.items():
    os.environ.setdefault(name.upper(), str(value))
  if 'jax' in sys.modules:  # already imported: it read the environment then
    jax = sys.modules['jax']
    for name in settings:
      jax.config.update(name, type(settings[name])(os.environ[name.upper()]))
  return str(path)
