"""`python -m aws_jax.signs COMMAND ...`: signs files from runs, their contents, and the PyTorch bridge.

  export --config=CONFIG --workdir=RUN [--round=K] --out=FILE   pruning round K (default: the last saved) of RUN
  inspect FILE                                                  metadata, and per layer: alive/total, % left, % +1
  to-torch FILE --out=CKPT.pt                                   a state_dict the authors' PyTorch code loads
  from-torch CKPT --out=FILE [--model=M --dataset=D --method=aws --round=K]   their checkpoint's signed mask

The file format: aws_jax/signs/format.py; the PyTorch checkpoint: aws_jax/signs/torch_bridge.py.
"""
import os

from absl import app, flags

from aws_jax import cli
from aws_jax.errors import UserError
from aws_jax.signs.export import export
from aws_jax.signs.format import describe, read
from aws_jax.signs.torch_bridge import TORCH_MODELS, from_torch, to_torch

_CONFIG = cli.define_config('export: the run\'s config.')
cli.define_path('workdir', None, 'export: the run directory.')
flags.DEFINE_integer('round', None, 'export: the pruning round (default: the last saved); from-torch: recorded.')
cli.define_path('out', None, 'export, from-torch: the signs file to write; to-torch: the .pt file to write.')
flags.DEFINE_string('model', None, f'from-torch: {" | ".join(TORCH_MODELS)} (default: what the file records).')
flags.DEFINE_string('dataset', None, 'from-torch: the dataset the checkpoint was trained on.')
flags.DEFINE_string('method', None, 'from-torch: aws or lrr, recorded in the file (default: unknown).')
flags.adopt_module_key_flags(cli)
COMMANDS = {'export': (0, ('config', 'workdir', 'round', 'out'), ('config', 'workdir', 'out')),  # (arguments,
            'inspect': (1, (), ()),                                                             # flags allowed,
            'to-torch': (1, ('out',), ('out',)),                                                # flags required)
            'from-torch': (1, ('out', 'model', 'dataset', 'method', 'round'), ('out',))}
OWN_FLAGS = ('config', 'workdir', 'round', 'out', 'model', 'dataset', 'method')


def _summary_line(out: str, metadata: dict) -> str:
  return (f'{out}: {metadata["model"]}, round {metadata["round"]}, {100 * metadata["fraction_left"]:.2f}% of the '
          f'prunable weights left, {os.path.getsize(out):,} bytes')


def main(argv):
  if len(argv) < 2 or argv[1] not in COMMANDS:
    cli.exit_with(f'give a command: {", ".join(COMMANDS)} (see --help)')
  command, arguments = argv[1], [cli.absolute(path) for path in argv[2:]]
  count, allowed, required = COMMANDS[command]
  if len(arguments) != count:
    cli.exit_with(f'{command} takes {count or "no"} argument{"s" * (count != 1)}, got {len(arguments)}: '
                  f'{" ".join(argv[2:])} (see --help)')
  given = {name: flags.FLAGS[name].value for name in OWN_FLAGS if flags.FLAGS[name].present}
  for name in given:
    if name not in allowed:
      cli.exit_with(f'--{name} is no flag of {command} (see --help)')
  for name in required:
    if name not in given:
      cli.exit_with(f'{command} needs --{name}')
  try:
    if command == 'inspect':
      leaves, signed, metadata = read(arguments[0])
      print(f'{argv[2]} ({os.path.getsize(arguments[0]):,} bytes)\n{describe(leaves, signed, metadata)}')
    elif command == 'export':
      config = cli.load_config(_CONFIG)
      with cli.holding([given['workdir']], 'signs export'):
        metadata = export(config, given['workdir'], given.get('round'), given['out'])
    elif command == 'to-torch':
      metadata = to_torch(arguments[0], given['out'])
    else:
      metadata = from_torch(arguments[0], given['out'], {k: v for k, v in given.items() if k != 'out'})
  except UserError as e:
    cli.exit_with(e)
  if command != 'inspect':
    print(_summary_line(given['out'], metadata), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
