"""The package's layering (docs/architecture.md), checked from its imports.

Floors, highest first; a module imports only from its own floor or below,
never a command-line program, and no import cycle exists between modules
or between subpackages:

  programs      boot_jax/train.py, sample.py, ... (and the Python API,
                boot_jax/api.py, which boot_jax/__init__.py exposes)
  evaluation, sampling, training
  distill
  teachers
  models, diffusion, data
  runtime, config

Every import statement counts, at module level or inside a function. The
checker reads the code (`ast`), so it sees imports that are never run.
"""

import ast
import collections
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = "boot_jax"
FLOORS = {
  "config": 0,
  "runtime": 0,
  "models": 1,
  "diffusion": 1,
  "data": 1,
  "teachers": 2,
  "distill": 3,
  "evaluation": 4,
  "sampling": 4,
  "training": 4,
}
PROGRAMS_FLOOR = 5  # top-level modules of the package: programs and the API
# Modules outside the layering: the standalone PyTorch scripts copied into
# SD and SD3 exports (they import nothing of boot_jax).
OUTSIDE = {"boot_jax.teachers.sd.one_step", "boot_jax.teachers.sd3.one_step"}
# Top-floor modules that are not programs: the Python API, which the
# package's __init__ exposes, and the tests' and benchmarks' tiny folders.
TOP_LIBRARY = {"boot_jax.api", "boot_jax.testing"}


def _name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _floor(module: str) -> int:
  parts = module.split(".")
  if len(parts) == 1 or parts[1] not in FLOORS:
    return PROGRAMS_FLOOR
  return FLOORS[parts[1]]


def _is_program(module: str) -> bool:
  parts = module.split(".")
  return (
    len(parts) == 2 and parts[1] not in FLOORS and module not in TOP_LIBRARY
  )


def import_graph(root: pathlib.Path) -> dict[str, dict[str, int]]:
  """module -> {imported boot_jax module: line} for the package at root."""
  modules = {
    _name(p, root): p
    for p in (root / PACKAGE).rglob("*.py")
    if _name(p, root) not in OUTSIDE
  }
  graph = {}
  for module, path in modules.items():
    edges = {}
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.ImportFrom) and node.level:
        raise AssertionError(f"{module}:{node.lineno}: relative import")
      if isinstance(node, ast.ImportFrom) and node.module:
        if node.module.split(".")[0] != PACKAGE:
          continue
        for alias in node.names:
          full = f"{node.module}.{alias.name}"
          targets.append(full if full in modules else node.module)
      elif isinstance(node, ast.Import):
        targets = [
          a.name for a in node.names if a.name.split(".")[0] == PACKAGE
        ]
      for target in targets:
        if target != module:
          edges.setdefault(target, node.lineno)
    graph[module] = edges
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle through each strongly connected knot of `graph`."""
  found, state = [], {}

  def visit(node, stack):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        found.append(stack[stack.index(nxt) :] + [nxt])
      elif nxt not in state:
        visit(nxt, stack)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [])
  return found


def violations(root: pathlib.Path = ROOT) -> list[str]:
  """Every broken rule of the layering, one line each."""
  graph = import_graph(root)
  out = []
  for module, edges in sorted(graph.items()):
    for target, line in sorted(edges.items()):
      if target == PACKAGE or target not in graph:
        continue
      if _is_program(target):
        out.append(
          f"{module}:{line} imports the program {target}: programs are "
          "imported by nothing"
        )
      elif _floor(target) > _floor(module):
        out.append(
          f"{module}:{line} imports {target}, a floor above it "
          f"({_floor(module)} < {_floor(target)}; docs/architecture.md)"
        )
  modules = {m: set(e) & set(graph) for m, e in graph.items()}
  for cycle in _cycles(modules):
    out.append("import cycle: " + " -> ".join(cycle))
  packages = collections.defaultdict(set)
  for module, targets in modules.items():
    for target in targets:
      a, b = module.split(".")[:2], target.split(".")[:2]
      if len(a) == 2 and len(b) == 2 and a != b:
        if a[1] in FLOORS and b[1] in FLOORS:
          packages[a[1]].add(b[1])
  for cycle in _cycles(packages):
    out.append("subpackage cycle: " + " -> ".join(cycle))
  return out


def test_the_package_keeps_its_layering():
  problems = violations()
  assert not problems, "\n".join(problems)


def test_every_subpackage_is_on_a_floor():
  subpackages = {
    p.parent.name
    for p in (ROOT / PACKAGE).glob("*/__init__.py")
    if p.parent.name != "__pycache__"
  }
  assert subpackages == set(FLOORS)


def _tree(tmp_path, files: dict[str, str]) -> pathlib.Path:
  for rel, text in files.items():
    path = tmp_path / PACKAGE / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return tmp_path


@pytest.mark.parametrize(
  "files,expected",
  [
    (  # a model reaching up into distillation
      {
        "models/__init__.py": "",
        "models/unet.py": "from boot_jax.distill import boot\n",
        "distill/__init__.py": "",
        "distill/boot.py": "",
      },
      "boot_jax.models.unet:1 imports boot_jax.distill.boot, a floor above",
    ),
    (  # a library module importing a program, inside a function
      {
        "teachers/__init__.py": "",
        "teachers/network.py": (
          "def prepare():\n  from boot_jax import train_teacher\n"
        ),
        "train_teacher.py": "",
      },
      "imports the program boot_jax.train_teacher",
    ),
    (  # two modules of one floor importing each other
      {
        "evaluation/__init__.py": "",
        "evaluation/pixel.py": "from boot_jax.evaluation import text\n",
        "evaluation/text.py": "from boot_jax.evaluation import pixel\n",
      },
      "import cycle: boot_jax.evaluation.pixel -> boot_jax.evaluation.text",
    ),
    (  # two subpackages of one floor importing each other
      {
        "sampling/__init__.py": "",
        "sampling/a.py": "from boot_jax.training import b\n",
        "training/__init__.py": "",
        "training/b.py": "from boot_jax.sampling import c\n",
        "sampling/c.py": "",
      },
      "subpackage cycle: sampling -> training -> sampling",
    ),
  ],
)
def test_the_checker_refuses_what_it_should(tmp_path, files, expected):
  problems = violations(_tree(tmp_path, files))
  assert any(expected in p for p in problems), problems
