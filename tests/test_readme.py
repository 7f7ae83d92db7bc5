"""The README is executed: its marked ```bash blocks run in order, from a scratch directory, as a reader runs them.

A block runs when the line before its ```bash fence is MARKER (README.md explains it in its opening comment). Each
runs in bash from a directory holding a copy of configs/, with its paths and flags as written. `python` there is a
small wrapper that appends SHRINK's overrides to runs of the digits configs on digits (fewer training examples,
epochs and barrier points; the same rounds and final epochs, so the checkpoints the README names exist; studies,
SHRINK_STUDY's: also fewer rounds, final epochs, starts and seeds; on a dataset of the README's own,
SHRINK_OWN_DATA's: all its examples, fewer rounds and final epochs), which keeps the whole README to a few minutes on
2 cores; nothing else is added.
The commands must also be quiet: no library log lines.
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, SUBPROCESS_TIMEOUT

MARKER = '<!-- readme-test: run -->'
SHRINK_EPOCHS = ('--config.prune.warmup_epochs=2', '--config.prune.round_epochs=1', '--config.barrier.points=3',
                 '--config.progress=False')
SHRINK = ('--config.train_examples=128', *SHRINK_EPOCHS)
SHRINK_OWN_DATA = (*SHRINK_EPOCHS, '--config.prune.rounds=2', '--config.final.epochs=2')  # it names no checkpoint
SHRINK_STUDY = (*SHRINK, '--config.prune.rounds=2', '--config.final.epochs=2', '--config.checkpoint_every_epochs=2',
                "--config.study.starts=('signed', 'dense')",  # one start from the pruning runs, one from none
                '--config.study.seeds=(2, 3)')  # two seeds: a difference's interval and an SGD-noise pair still exist
SHRUNK = ('aws_jax.main', 'aws_jax.study', 'aws_jax.barrier', 'aws_jax.signs')  # the commands that read --config

WRAPPER = f'''#!{sys.executable}
"""`python` for the README's commands: appends shrinking overrides to runs of configs/digits.py."""
import os
import sys

args = sys.argv[1:]
config = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), '')
own_data = any(a.startswith('--config.dataset=') for a in args)  # a small dataset of its own: all its examples
if args[:1] == ['-m'] and args[1] in {SHRUNK!r} and config.startswith('configs/digits.py'):
  args += {SHRINK_OWN_DATA!r} if own_data else {SHRINK_STUDY!r} if config.endswith(':study') else {SHRINK!r}
os.execv(sys.executable, [sys.executable, *args])
'''


def marked_blocks(text: str) -> list[str]:
  """The bodies of the ```bash blocks right after a MARKER line, in order."""
  return re.findall(rf'^{re.escape(MARKER)}\n```bash\n(.*?)^```', text, re.M | re.S)


def test_marked_blocks_are_found_and_only_those():
  text = '\n'.join(['```bash', 'not run', '```', MARKER, '```bash', 'echo 1 \\', '  2', '```', MARKER, 'prose',
                    '```bash', 'not run either', '```'])
  assert marked_blocks(text) == ['echo 1 \\\n  2\n']


@pytest.mark.long
def test_readme_commands_run_in_order(tmp_path):
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    blocks = marked_blocks(f.read())
  assert len(blocks) >= 5, 'the README lost its marked command blocks'
  scratch, bin_dir = tmp_path / 'reader', tmp_path / 'bin'
  shutil.copytree(os.path.join(REPO, 'configs'), scratch / 'configs', ignore=shutil.ignore_patterns('__pycache__'))
  bin_dir.mkdir()
  (bin_dir / 'python').write_text(WRAPPER)
  (bin_dir / 'python').chmod(0o755)
  env = {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
         'PYTHONPATH': os.pathsep.join(p for p in (REPO, os.environ.get('PYTHONPATH')) if p)}
  for block in blocks:
    result = subprocess.run(['bash', '-e', '-o', 'pipefail', '-c', block], cwd=scratch, env=env, capture_output=True,
                            text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 0, f'README block failed:\n{block}\n{result.stderr[-3000:]}'
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    library_logs = [line for line in result.stderr.splitlines()
                    if re.match(r'[IWE]\d{4} ', line) and '] aws_jax:' not in line]  # absl's format; ours say aws_jax:
    assert not library_logs, f'library logs from:\n{block}\n' + '\n'.join(library_logs[:5])
