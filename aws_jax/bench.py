"""Speed figures as JSON: `python -m aws_jax.bench` (the full suite) or `--only=step --model=resnet20 --torch`; and
what a config will cost: `--plan=CONFIG [--config.KEY=VALUE ...]` (aws_jax/estimate.py).

The suite times aws_jax's jitted train step (masked kernels, AWS interpolation, SGD momentum + weight decay) on
random data (aws_jax/speed.py): compile time separately, then the median over `--steps` steps; masking's cost
inside the step (the same step without masks, in alternation); achieved GFLOP/s (XLA's FLOP count of the model's
work) and its share of the peak of a large jitted float32 matmul on the same machine; the cost of AWS
interpolation; the number of compilations over a pruning stage; an 11-point error barrier's wall time; seeds
trained at once. With `--torch`, benchmarks/torch_baseline.py (PyTorch, trained the authors' way;
`pip install -e ".[torch]"`) runs the same step alternately in the same invocation, and the ratio aws_jax / PyTorch
is printed with each alternation's own. `--onednn_libraries=system,pypi` times aws_jax's step once per oneDNN build
(aws_jax.onednn.LIBRARIES) in each alternation, each in a process of its own, a row per build. `--conv` picks the
convolutions (aws_jax.conv.IMPLS). `--smoke` shrinks everything to seconds (the suite runs it). `--help` imports
nothing heavy.
"""
import json
import os
import platform

from absl import app, flags

from aws_jax import allocator, cli
from aws_jax import config as config_lib

_ONLY = flags.DEFINE_enum('only', None, ['step', 'matmul', 'stage', 'barrier', 'seeds'],
                          'Run one part of the suite.')
_MODEL = flags.DEFINE_enum('model', 'resnet20', config_lib.MODELS, 'Model for --only=step.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size for --only=step.')
_IMAGE = flags.DEFINE_integer('image', 32, 'Image side for --only=step.')
_CLASSES = flags.DEFINE_integer('classes', 10, 'Classes for --only=step.')
_SPARSITY = flags.DEFINE_float('sparsity', 0.0, 'Fraction of prunable weights masked, for --only=step.')
_AWS = flags.DEFINE_boolean('aws', True, 'AWS interpolation in the step, for --only=step.')
_CONV = flags.DEFINE_enum('conv', 'auto', config_lib.CONV_IMPLS, 'Convolutions of the steps (aws_jax.conv.IMPLS).')
_PROFILE = flags.DEFINE_boolean('profile', False, "With --only=step: where the step's time goes, by kind of operation.")
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps after compilation.')
_TORCH = flags.DEFINE_boolean('torch', False, 'Also time the PyTorch baseline (--torch_script), alternating.')
_LIBRARIES = flags.DEFINE_list(
    'onednn_libraries', [], "Time the steps with each of these oneDNN builds (aws_jax.onednn.LIBRARIES: 'system', "
    "'pypi'), each in a process of its own, alternating with each other and PyTorch. Default: this process's.")
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Alternations of aws_jax and PyTorch runs (aws_jax runs alone).')
_SMOKE = flags.DEFINE_boolean('smoke', False, 'Tiny sizes and few steps: checks the benchmark runs, times nothing.')
_PLAN = flags.DEFINE_string(
    'plan', None, 'A config (FILE or NAME, :PRESET, as --config; --config.KEY=VALUE overrides it): print the train '
    'steps of its run and of a study of it, time its step on this device, and estimate their wall time. Nothing '
    'else runs; --steps defaults to 3 here.')
_PLAN_BATCH = flags.DEFINE_integer(
    'plan_batch', 0, "With --plan: time the step at this batch and scale it linearly to the config's (0: the "
    "config's own batch; smaller where that does not fit this machine's memory).")
_CONFIG = cli.define_config('The config of --plan (--plan sets it).')
_TORCH_SCRIPT = flags.DEFINE_string(
    'torch_script', os.path.join(os.path.dirname(__file__), '..', 'benchmarks', 'torch_baseline.py'),
    'Path of the PyTorch baseline script (needs torch: pip install -e ".[torch]").')

# (model, batch, classes, sparsity) of the suite's step timings: docs/method.md's CIFAR settings.
SUITE = (('resnet20', 128, 10, 0.0), ('resnet20', 128, 10, 0.9), ('resnet56', 128, 10, 0.0),
         ('mobilenetv2', 128, 10, 0.0), ('vgg16', 128, 10, 0.0), ('vgg16', 128, 10, 0.9), ('resnet50', 64, 100, 0.0))
SMOKE_SUITE = (('small_cnn', 8, 10, 0.5),)  # the smallest compile: the smoke run checks the code, times nothing


def cpu_flags() -> list[str]:
  """The flags of this CPU that decide its convolutions' speed (Linux; [] elsewhere)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      present = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
  except OSError:
    return []
  return [f for f in ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'avx512_vp2intersect', 'avx512_fp16', 'amx_tile',
                      'amx_bf16') if f in present]


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel  (--help stays light)
  from aws_jax import conv, onednn, speed  # pylint: disable=import-outside-toplevel
  cli.quiet_logging()
  if _PLAN.value:
    plan(cli.load_config(_CONFIG), _PLAN.value, _PLAN_BATCH.value, _STEPS.value if _STEPS.present else 3)
    return
  smoke, steps = _SMOKE.value, 2 if _SMOKE.value else _STEPS.value
  image, impl = 8 if smoke else _IMAGE.value, _CONV.value
  torch_script = _TORCH_SCRIPT.value if _TORCH.value else None
  libraries = tuple(_LIBRARIES.value)
  if set(libraries) - set(onednn.LIBRARIES):
    raise app.UsageError(f'--onednn_libraries: {", ".join(libraries)} not all of {", ".join(onednn.LIBRARIES)}')
  result = {'machine': platform.machine(), 'cpu_flags': cpu_flags(), 'device': str(jax.devices()[0]),
            'jax': jax.__version__, 'cpu_count': os.cpu_count(), 'convolutions': conv.resolve(impl),
            'onednn': onednn.version() if conv.resolve(impl).startswith('onednn') else None,
            'malloc': 'tcmalloc' if 'tcmalloc' in os.environ.get('LD_PRELOAD', '') else 'default'}  # PyTorch's too
  if _ONLY.value in (None, 'step', 'matmul'):
    result['matmul_peak'] = speed.matmul_peak(256 if smoke else 4096, steps if _ONLY.value == 'matmul' else 5)
  if _ONLY.value == 'step':
    result['steps'] = speed.compared((_MODEL.value, _BATCH.value, _CLASSES.value, _SPARSITY.value), image, steps,
                                     _AWS.value, _REPEATS.value, torch_script, impl, _PROFILE.value, libraries)
  if _ONLY.value is None:
    result['steps'] = [row for s in (SMOKE_SUITE if smoke else SUITE)
                       for row in speed.compared(s, image, steps, True, _REPEATS.value, torch_script, impl,
                                                 libraries=libraries)]
    model_name, batch, classes, _ = (SMOKE_SUITE if smoke else SUITE)[0]
    without = speed.step_figures(model_name, batch, image, classes, steps, 0.0, False, impl)
    with_aws = result['steps'][0]
    result['aws_overhead'] = {'model': model_name, 'ms_aws': with_aws['ms_per_step_median'],
                              'ms_lrr': without['ms_per_step_median'],
                              'overhead': round(with_aws['ms_per_step_median'] / without['ms_per_step_median'] - 1,
                                                4)}
  for row in result.get('steps', ()):
    row['share_of_matmul_peak'] = round(row['gflops_achieved'] / result['matmul_peak']['gflops'], 3)
  if _ONLY.value in (None, 'stage'):
    result['stage'] = speed.stage_compilations(2 if smoke else 4, 2 if smoke else 5)
  if _ONLY.value in (None, 'barrier'):
    result['barrier'] = speed.barrier_wall_time(SMOKE_SUITE[0][0] if smoke else 'resnet20', 3 if smoke else 11,
                                                64 if smoke else 2000, 32 if smoke else 1000, image)
  if _ONLY.value in (None, 'seeds'):  # final.seeds_at_once: 8 seeds of small_cnn (Fashion-MNIST size), ResNet-20
    result['seeds'] = [speed.seeds_figures('small_cnn', 2 if smoke else 8, 8 if smoke else 128, 8 if smoke else 28,
                                           1, steps)]
    if not smoke:
      result['seeds'].append(speed.seeds_figures('resnet20', 8, 128, image, 3, steps))
  print(json.dumps(result))


def plan(config, spec: str, batch: int, steps: int) -> None:
  """Prints the plan of `config` (`estimate.report`), then its figures as a JSON line."""
  from aws_jax import estimate  # pylint: disable=import-outside-toplevel
  figures = estimate.measure(config, batch or config.batch_size, steps)
  lines, result = estimate.report(config, spec, figures, estimate.device_name())
  print('\n'.join(lines))
  print(json.dumps(result))


def parse_flags(argv):
  """`cli.parse_flags`, with `--plan=CONFIG` also read as `--config=CONFIG`, so that --config.KEY=VALUE overrides it;
  no persistent compilation cache, so that the compile times it prints are compilations."""
  plans = [argument[len('--plan='):] for argument in argv[1:] if argument.startswith('--plan=')]
  return cli.parse_flags(argv[:1] + [f'--config={spec}' for spec in plans[-1:]] + argv[1:], compilation_cache=False)


if __name__ == '__main__':
  allocator.restart_with_tcmalloc()
  app.run(main, flags_parser=parse_flags)
