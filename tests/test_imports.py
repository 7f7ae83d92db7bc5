"""The package's shape: no import circle among aws_jax's modules, and no module over ~400 lines."""
import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, 'aws_jax')
MAX_LINES = 420


def modules() -> dict[str, str]:
  """{dotted module name: file} of every module of aws_jax."""
  found = {}
  for root, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith('.py'):
        parts = os.path.relpath(os.path.join(root, name), REPO)[:-3].split(os.sep)
        found['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = os.path.join(root, name)
  return found


def imports(path: str, known: set[str]) -> set[str]:
  """The aws_jax modules `path` imports anywhere (at module level, inside functions, or by
  `importlib.import_module('aws_jax.…')`): a circle through a deferred import is a circle all the same."""
  imported = set()
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
    if isinstance(node, ast.Import):
      imported |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('aws_jax'):
      imported.add(node.module)
      imported |= {f'{node.module}.{alias.name}' for alias in node.names}
    elif (isinstance(node, ast.Call) and getattr(node.func, 'attr', '') == 'import_module' and node.args and
          isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith('aws_jax')):
      imported.add(node.args[0].value)
  return imported & known


def test_no_import_circle():
  files = modules()
  graph = {name: imports(path, set(files)) for name, path in files.items()}
  # A package's __init__ is imported on the way to its modules: an edge to aws_jax.x.y goes through aws_jax.x.
  for name, targets in graph.items():
    graph[name] = {t for t in targets if t != name} | {t.rsplit('.', 1)[0] for t in targets
                                                       if t.rsplit('.', 1)[0] in files and
                                                       t.rsplit('.', 1)[0] not in (name, 'aws_jax') and
                                                       not name.startswith(t.rsplit('.', 1)[0] + '.')}
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for target in sorted(graph[node]):
      assert state.get(target) != 'open', 'import circle: ' + ' → '.join(stack[stack.index(target):] + [target])
      if target not in state:
        visit(target)
    stack.pop()
    state[node] = 'done'

  for name in sorted(graph):
    if name not in state:
      visit(name)


def test_no_module_is_too_long():
  lengths = {name: sum(1 for _ in open(path, encoding='utf-8')) for name, path in modules().items()}
  assert not {name: n for name, n in lengths.items() if n > MAX_LINES}
