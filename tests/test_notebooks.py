"""The Colab notebooks: committed without outputs, and run end to end at tiny scale (digits, CPU) in a fresh kernel."""
import json
import os
import pathlib

import nbclient
import nbformat
import pytest

from aws_jax.rundir import RunDir

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ('quickstart', 'ablation')


def read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(REPO / 'colab' / f'{name}.ipynb', as_version=4)


def parameters_index(nb: nbformat.NotebookNode) -> int:
  tagged = [i for i, cell in enumerate(nb.cells) if 'parameters' in cell.metadata.get('tags', [])]
  assert len(tagged) == 1, 'each notebook has exactly one cell tagged `parameters`'
  return tagged[0]


def config_index(nb: nbformat.NotebookNode) -> int:
  return next(i for i, cell in enumerate(nb.cells) if 'def make_config' in cell.source)


def execute(nb: nbformat.NotebookNode, workdir: pathlib.Path, monkeypatch, scale: str = 'tiny') -> pathlib.Path:
  """Runs `nb` in a fresh kernel with SCALE and RUNS (in `workdir`) injected as papermill would; returns RUNS."""
  runs = workdir / 'runs'
  injected = nbformat.v4.new_code_cell(f"SCALE = {scale!r}\nRUNS = {str(runs)!r}")
  injected.metadata['tags'] = ['injected-parameters']
  nb.cells.insert(parameters_index(nb) + 1, injected)
  # The kernel imports this checkout (so the install cell finds it and skips), and inherits the XLA cache dir.
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
  nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(workdir)}}).execute()
  return runs


def outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
  """All stream text of the executed notebook, and how many PNG images it displayed."""
  text, images = [], 0
  for cell in nb.cells:
    for output in cell.get('outputs', []):
      text.append(output.get('text', ''))
      images += 'image/png' in output.get('data', {})
  return ''.join(text), images


def load_json(path: pathlib.Path) -> dict:
  assert path.exists(), f'{path} was not written'
  with open(path) as f:
    return json.load(f)


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_without_outputs(name):
  nb = read(name)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert cell.outputs == [] and cell.execution_count is None, f'{name}: strip the outputs of:\n{cell.source}'
  assert "SCALE = 'full'" in nb.cells[parameters_index(nb)].source


def test_notebooks_share_install_and_config():
  """At full scale both notebooks use the same AWS run directory, so they must build the same config."""
  quickstart, ablation = read('quickstart'), read('ablation')
  for index in (lambda nb: parameters_index(nb) + 1, config_index):
    assert quickstart.cells[index(quickstart)].source == ablation.cells[index(ablation)].source


def test_full_scale_configs(tmp_path, monkeypatch):
  """SCALE = 'full' builds valid VGG-16-BN / CIFAR-10 configs (the cells up to make_config, nothing trained)."""
  nb = read('quickstart')
  nb.cells = nb.cells[:config_index(nb) + 1] + [nbformat.v4.new_code_cell(
      'from aws_jax import config as config_lib\n'
      'for method in ("aws", "lrr"):\n'
      '  c = make_config(method)\n'
      '  config_lib.validate(c)\n'
      '  print(c.model, c.dataset, c.method, c.prune.rounds, c.final.epochs, c.download)')]
  execute(nb, tmp_path, monkeypatch, scale='full')
  text, _ = outputs(nb)
  assert 'vgg16 cifar10 aws 15 100 True' in text and 'vgg16 cifar10 lrr 15 100 True' in text


def test_quickstart_tiny(tmp_path, monkeypatch):
  nb = read('quickstart')
  runs = execute(nb, tmp_path, monkeypatch)
  text, images = outputs(nb)
  assert f'aws_jax from {REPO}' in text  # the install cell found this checkout and installed nothing
  results = load_json(pathlib.Path(RunDir(runs / 'tiny_aws').results))
  assert [r['round'] for r in results['rounds']] == [0, 1, 2]
  assert all('psi_reset_barrier' in r for r in results['rounds'])
  assert {f['mode'] for f in results['final']} == {'signed', 'mask', 'retrain'}
  for png in ('figures/accuracy_vs_sparsity.png', 'figures/psi_reset_barrier.png', 'barriers/lmc_round2_seed2.png'):
    assert (runs / 'tiny_aws' / png).stat().st_size > 0, png
  assert 'ψ-reset barrier' in text and images == 3


@pytest.mark.long
def test_ablation_tiny(tmp_path, monkeypatch):
  nb = read('ablation')
  runs = execute(nb, tmp_path, monkeypatch)
  text, images = outputs(nb)
  assert f'aws_jax from {REPO}' in text
  for method in ('aws', 'lrr'):
    rounds = load_json(pathlib.Path(RunDir(runs / f'tiny_{method}').results))['rounds']
    assert [r['round'] for r in rounds] == [0, 1, 2] and rounds[0]['method'] == method
    assert all('psi_reset_barrier' in r for r in rounds)
  ablation = load_json(runs / 'tiny_ablation' / 'ablation.json')
  assert set(ablation['test_accuracy']) == {'signed mask', 'mask only', 'random signs', 'LRR signed mask'}
  assert all(len(accs) == len(ablation['seeds']) and all(0 <= a <= 1 for a in accs)
             for accs in ablation['test_accuracy'].values())
  for png in ('starts.png', 'psi_reset_barrier.png', 'psi_reset_curves.png'):
    assert (runs / 'tiny_ablation' / png).stat().st_size > 0, png
  assert images == 3
