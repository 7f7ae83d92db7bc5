"""The benchmark command must not rot: its smoke run prints every figure (timings are not asserted)."""
import json
import os
import subprocess
import sys
import pytest

from aws_jax import cli
from conftest import REPO


def _benchmark(name: str):
  """benchmarks/NAME.py as a module."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'benchmarks', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


TORCH_BASELINE = os.path.join(REPO, 'benchmarks', 'torch_baseline.py')

# The one JSON line of benchmarks/torch_baseline.py, key for key as the authors'-way reference script prints it.
TORCH_KEYS = {'framework', 'version', 'model', 'batch', 'image', 'classes', 'aws', 'threads', 'params',
              'ms_per_step_median', 'ms_per_step_min', 'ms_per_step_max', 'steps', 'machine'}


@pytest.mark.long
def test_bench_smoke_prints_every_figure():
  result = subprocess.run([sys.executable, '-m', 'aws_jax.bench', '--smoke'], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  step = figures['steps'][0]
  for key in ('compile_s', 'ms_per_step_median', 'ms_per_step_without_masks', 'gflops_achieved',
              'share_of_matmul_peak'):
    assert step[key] > 0, key
  assert step['masking_ms'] == pytest.approx(step['ms_per_step_median'] - step['ms_per_step_without_masks'], abs=0.02)
  assert step['convolutions'] == figures['convolutions']
  assert figures['matmul_peak']['gflops'] > 0
  assert figures['aws_overhead']['ms_lrr'] > 0
  assert figures['stage']['train_step_compilations'] == 1
  assert figures['barrier']['points'] == 3 and figures['barrier']['wall_s'] > 0
  assert [(s['model'], s['seeds']) for s in figures['seeds']] == [('small_cnn', 2)]  # ResNet-20 too at full size
  assert all(s['vmapped_images_per_s'] > 0 and s['sequential_images_per_s'] > 0 for s in figures['seeds'])


def test_plan_counts_the_steps_a_config_implies_and_times_its_step():
  """`--plan` on the digits config, one key overridden: the step counts of its run and of its study, as the config
  implies them (counted here from its values), a measured step, and estimates that add up."""
  result = subprocess.run([sys.executable, '-m', 'aws_jax.bench', '--plan=configs/digits.py', '--config.final.epochs=7',
                           '--steps=1'], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  *lines, last = result.stdout.strip().splitlines()
  plan = json.loads(last)
  config = cli.get_config('configs/digits.py')
  steps = 1437 // config.batch_size  # digits: 1437 training images
  assert plan['steps_per_epoch'] == steps == 22
  pruning = (config.prune.warmup_epochs + config.prune.rounds * config.prune.round_epochs) * steps
  final_training = 7 * steps
  assert plan['run']['pruning']['train_steps'] == pruning
  assert plan['run']['final']['train_steps'] == len(config.final.modes) * len(config.final.seeds) * final_training
  # The study: each method's pruning stage; its starts (dense aside) and the retrained reference of the LMC barrier
  # for each seed; dense once per seed.
  starts = len(set(config.study.starts) - {'dense'} | {'retrain'})
  finals = (len(config.study.methods) * starts + 1) * len(config.study.seeds)
  assert (plan['study']['pruning_stages'], plan['study']['final_trainings']) == (len(config.study.methods), finals)
  assert plan['study']['train_steps'] == len(config.study.methods) * pruning + finals * final_training
  assert plan['run']['pruning']['eval_images'] == pruning // steps * 360  # the test split after every epoch
  assert plan['step_s'] > 0 and plan['eval_s_per_image'] > 0 and 0 < plan['run_s'] < plan['study_s']
  assert lines[0].startswith('plan of configs/digits.py: small_cnn on digits') and 'estimate: run' in lines[-1]


def test_help_imports_nothing_heavy():
  """`python -m aws_jax.bench --help` answers at once: importing the command loads neither JAX nor the models."""
  code = 'import sys, aws_jax.bench; print(sorted({"jax", "flax", "aws_jax.models"} & set(sys.modules)))'
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, check=True)
  assert result.stdout.strip() == '[]'
  result = subprocess.run([sys.executable, '-m', 'aws_jax.bench', '--help'], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0 and '--conv' in result.stdout


def test_step_without_masks_is_the_same_step_with_the_masks_folded_away():
  """The in-step masking figure compares like with like: without masks, the program has no masking selects left,
  and from a full mask both programs compute the same step."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from aws_jax import models, pruning, speed, train  # pylint: disable=import-outside-toplevel
  model = models.create_model('small_cnn', 10)
  tx = train.make_optimizer('sgd', 0.1, 0.9, 5e-4)
  params, batch_stats = jax.jit(train.init_variables, static_argnums=(0, 2))(model, jax.random.PRNGKey(0), (8, 8, 1))
  state = train.create_state(params, batch_stats, pruning.full_mask(params), params, tx, jax.random.PRNGKey(1))
  step = train.make_train_step(model, tx, aws=True, is_norm=pruning.norm_leaves(params), augmentation='none',
                               mean=np.zeros(1, np.float32), std=np.ones(1, np.float32))
  images = np.random.default_rng(0).standard_normal((8, 8, 8, 1), np.float32)
  labels, indices = np.arange(8) % 10, np.arange(8)
  hlo = {name: jax.jit(fn).lower(state, images, labels, indices).compile().as_text()
         for name, fn in (('masked', step), ('unmasked', speed.without_masks(step)))}
  assert hlo['masked'].count(' select(') > hlo['unmasked'].count(' select(')
  (masked, _), (unmasked, _) = (jax.jit(fn)(state, images, labels, indices) for fn in (step, speed.without_masks(step)))
  jax.tree.map(np.testing.assert_array_equal, masked, unmasked)


@pytest.mark.parametrize('model', ['resnet20', 'resnet56', 'mobilenetv2'])
def test_torch_baseline_has_aws_jax_networks(model):
  """The PyTorch baseline's networks have as many parameters as aws_jax's of the same name."""
  pytest.importorskip('torch')
  import jax  # pylint: disable=import-outside-toplevel
  from aws_jax import models, speed, train  # pylint: disable=import-outside-toplevel
  params, _ = jax.eval_shape(lambda: train.init_variables(models.create_model(model, 10), jax.random.PRNGKey(0),
                                                          (32, 32, 3)))  # shapes suffice: no compilation
  figures = speed.torch_figures(TORCH_BASELINE, model, batch=2, image=8, classes=10, steps=1, sparsity=0.0,
                                aws=False)
  assert figures['params'] == models.count_params(params)


def test_torch_baseline_prints_what_bench_reads():
  """speed.torch_figures runs the in-repo PyTorch baseline (bench's default --torch_script), reads its JSON line."""
  pytest.importorskip('torch')
  from aws_jax import bench, speed  # pylint: disable=import-outside-toplevel
  assert os.path.samefile(bench._TORCH_SCRIPT.default, TORCH_BASELINE)  # pylint: disable=protected-access
  figures = speed.torch_figures(TORCH_BASELINE, 'resnet20', batch=2, image=8, classes=10, steps=1, sparsity=0.5,
                                aws=True)
  assert set(figures) == TORCH_KEYS
  assert figures['framework'] == 'torch' and figures['version']  # compared() reads the version ...
  assert figures['ms_per_step_median'] > 0                        # ... and the median
  assert (figures['model'], figures['batch'], figures['image'], figures['steps']) == ('resnet20', 2, 8, 1)
  assert figures['params'] == 272_474  # ResNet-20, 10 classes: the same count as aws_jax's model


def test_each_onednn_library_alternates_with_pytorch(monkeypatch):
  """With `libraries`, compared() times the step once per oneDNN build in each alternation, then PyTorch, and gives
  a row per build with its ratio and each alternation's."""
  from aws_jax import speed  # pylint: disable=import-outside-toplevel
  calls, ms = [], iter([10.0, 5.0, 20.0, 12.0, 4.0, 16.0])
  step = lambda library: {'onednn_library': library, 'ms_per_step_median': next(ms), 'masking_share': 0.1}
  monkeypatch.setattr(speed, 'step_figures_with', lambda library, *args: calls.append(library) or step(library))
  monkeypatch.setattr(speed, 'torch_figures', lambda *args: calls.append('torch') or step(None) | {'version': '2'})
  rows = speed.compared(('resnet20', 8, 10, 0.0), 8, 1, True, 2, 'torch_baseline.py', libraries=('system', 'pypi'))
  assert calls == ['system', 'pypi', 'torch'] * 2
  assert [(r['onednn_library'], r['ms_per_step_medians'], r['ratio_jax_over_torch'], r['ratios_per_repeat'])
          for r in rows] == [('system', [10.0, 12.0], 0.625, [0.5, 0.75]), ('pypi', [5.0, 4.0], 0.25, [0.25, 0.25])]


def test_step_with_each_installed_onednn_library_runs_in_a_process_of_its_own():
  from aws_jax import speed  # pylint: disable=import-outside-toplevel
  from test_onednn import INSTALLED  # pylint: disable=import-outside-toplevel
  for library in INSTALLED:
    figures = speed.step_figures_with(library, 'small_cnn', 8, 8, 10, 1, 0.0, True, 'auto', False)
    assert (figures['onednn_library'], figures['convolutions']) == (library, 'onednn') and figures['onednn']


def test_onednn_primitives_sums_verbose_lines_of_either_oneDNN_per_step():
  """benchmarks/onednn_primitives.py reads oneDNN 2.x and 3.x verbose lines alike (shapes shortened here)."""
  primitives = _benchmark('onednn_primitives')
  v2 = ['onednn_verbose,info,cpu,runtime:OpenMP',
        'onednn_verbose,exec,cpu,convolution,jit:avx512_core,forward_training,src_f32::blocked:acdb:f0,,'
        'alg:convolution_direct,mb8_ic3oc16_ih32,2.0',
        'onednn_verbose,exec,cpu,convolution,jit_wino_4x3:avx512_core,backward_data,src_f32::blocked:acdb:f0,,'
        'alg:convolution_winograd,mb8_ic16oc16_ih32,1.5',
        'onednn_verbose,exec,cpu,reorder,jit:uni,undef,src_f32::blocked:abcd:f0,,,8x16x32x32,0.5']
  v3 = ['onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,'
        'src:f32::blocked:acdb::f0,,alg:convolution_direct,mb8_ic3oc16_ih32,3.0']
  ms, implementations, steps = primitives.per_step('\n'.join(v2 * 2 + v3))
  assert steps == 3  # three execs of the first forward convolution's shape
  assert ms == pytest.approx({('convolution', 'forward_training', 'convolution_direct'): 7.0 / 3,
                              ('convolution', 'backward_data', 'convolution_winograd'): 1.0,
                              ('reorder', 'undef', ''): 1.0 / 3})
  assert implementations['convolution', 'forward_training', 'convolution_direct'] == {
      'jit:avx512_core', 'brg_conv_fwd:avx512_core'}
  assert '| convolution | backward_data | convolution_winograd | 1.0 |' in primitives.table(
      {'system': (ms, implementations, steps)})


def test_suite_profile_adds_each_tests_processes_to_its_own_cpu():
  """benchmarks/suite_profile.py: a test's CPU and compilation are its own plus its processes'; pytest's own
  processes count only in the event totals; commands are named by module."""
  profile = _benchmark('suite_profile')
  assert [profile.command_name(a) for a in (['/r/aws_jax/main.py'], ['/r/aws_jax/study/__main__.py'], ['-c'],
                                             ['/venv/bin/pytest'])] == ['aws_jax.main', 'aws_jax.study',
                                                                         'python -c', 'pytest']
  miss = 'compilation (cache misses)'
  records = [
      {'kind': 'test', 'test': 't::a', 'cpu': 1.5, 'compile_misses_s': 0.5},
      {'kind': 'test', 'test': 't::b', 'cpu': 0.25, 'compile_misses_s': 0.0},
      {'kind': 'process', 'argv': ['/r/aws_jax/main.py'], 'cpu': 3.0, 'test': 't::a', 'seconds': {miss: 2.0}},
      {'kind': 'process', 'argv': ['/r/aws_jax/main.py'], 'cpu': 2.0, 'test': 't::a', 'seconds': {'tracing': 0.5}},
      {'kind': 'process', 'argv': ['-c'], 'cpu': 9.0, 'test': '', 'seconds': {miss: 4.0, 'tracing': 1.0}}]
  summary = profile.summarize(records)
  assert summary['tests'] == {'t::a': {'cpu': 6.5, 'processes': 2, 'compile_misses_s': 2.5},
                              't::b': {'cpu': 0.25, 'processes': 0, 'compile_misses_s': 0.0}}
  assert summary['commands'] == {'aws_jax.main': {'cpu': 5.0, 'processes': 2}}
  assert summary['seconds'] == {miss: 6.0, 'tracing': 1.5}
  assert (summary['processes'], summary['in_process_cpu']) == (3, 1.75)
