"""The Colab sampling demo (notebooks/sampling_demo.ipynb), executed.

The notebook runs from a clean kernel with its FAST setting on one CPU
device; every figure cell must draw, and the printed speed ratio and
quality numbers must be finite. FAST loads the demo's run shipped in
notebooks/digits_run, whose one-step FID-digits must be within 2x the
demo student's in docs/BENCHMARKS.md (the notebook scores 500 samples,
the demo 2,000: FID is biased upwards at fewer samples, so the notebook's
number is the higher of the two for the same student). Parameter errors
stop at the checking cell with one readable line.
"""

import importlib.util
import math
import pathlib
import re
import time

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "sampling_demo.ipynb"


def _builder():
  spec = importlib.util.spec_from_file_location(
    "make_sampling_demo", ROOT / "notebooks" / "make_sampling_demo.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(tmp_path, monkeypatch, **params):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  for cell in nb.cells:  # a clean run: none of the committed outputs
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
  _builder().set_parameters(nb, **params)
  # Colab's CPU runtime has one device (this session fakes eight).
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  client = nbclient.NotebookClient(
    nb,
    timeout=600,
    kernel_name="python3",
    resources={"metadata": {"path": str(tmp_path)}},
  )
  return nb, client


def _text(cell) -> str:
  return "".join(
    o.get("text", "")
    for o in cell.get("outputs", [])
    if o.output_type == "stream"
  )


def _draws(cell) -> bool:
  return any(
    "image/png" in o.get("data", {})
    for o in cell.outputs
    if o.output_type in ("display_data", "execute_result")
  )


def test_committed_notebook_has_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  figures = [
    c
    for c in code
    if "plt.show()" in c.source and "SD_WORKDIR:" not in c.source
  ]
  assert figures and all(_draws(c) for c in figures)
  params = next(c for c in code if "parameters" in c.metadata.get("tags", []))
  assert "FAST = False" in params.source


def test_committed_notebook_is_its_builders(tmp_path):
  """The cells equal notebooks/make_sampling_demo.py's (after ruff)."""
  import shutil
  import subprocess

  built = tmp_path / "built.ipynb"
  nbformat.write(_builder().build(), built)
  if shutil.which("ruff"):
    subprocess.run(["ruff", "format", "-q", str(built)], check=True)
  ours = [c.source for c in nbformat.read(built, as_version=4).cells]
  committed = nbformat.read(NOTEBOOK, as_version=4).cells
  assert ours == [c.source for c in committed]


def _demo_student_fid() -> float:
  """The demo student's FID-digits as docs/BENCHMARKS.md documents it."""
  text = (ROOT / "docs" / "BENCHMARKS.md").read_text()
  section = text.split("<!-- demo-refine: begin -->", 1)[1]
  section = section.split("<!-- demo-refine: end -->", 1)[0]
  return float(re.search(r"\| student 1 step \| ([\d.]+) \|", section)[1])


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  nb, client = _run(tmp_path, monkeypatch, FAST=True, OUT=str(tmp_path))
  t0 = time.perf_counter()
  client.execute()
  seconds = time.perf_counter() - t0
  print(f"the notebook with FAST = True ran in {seconds:.0f} s")
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert not any(o.output_type == "error" for c in code for o in c.outputs)
  setup = next(c for c in code if "find_spec" in c.source)
  assert "skipping the set-up" in _text(setup)
  for cell in code:
    if "plt.show()" in cell.source and "SD_WORKDIR:" not in cell.source:
      assert _draws(cell), cell.source[:200]
  text = "\n".join(_text(c) for c in code)
  ratios = re.findall(r"the student is ([\d.]+)x faster than DDIM-50", text)
  assert len(ratios) == 2 and all(math.isfinite(float(r)) for r in ratios)
  dials = re.findall(r"K = \[[\d, ]+\]: ([\d., e+-]+)", text)
  assert len(dials) == 2
  for line in dials:
    assert all(math.isfinite(float(v)) for v in line.split(", "))
  assert "the demo's trained run, shipped in" in text
  [digits] = re.findall(r"digits: K = \[[\d, ]+\]: ([\d.]+)", text)
  demo = _demo_student_fid()
  print(f"notebook student FID-digits {digits} (the demo's: {demo})")
  assert float(digits) <= 2 * demo, (digits, demo)
  assert "skipped: set SD_FOLDER and SD_WORKDIR" in text


@pytest.mark.parametrize(
  "params,expected",
  [
    (dict(WORKDIR="/nonexistent/run"), "does not exist"),
    (dict(SD_FOLDER="{tmp}", SD_WORKDIR="{tmp}"), "has no unet/ folder"),
  ],
)
def test_parameter_errors_stop_with_one_line(
  tmp_path, monkeypatch, params, expected
):
  params = {k: v.format(tmp=tmp_path) for k, v in params.items()}
  nb, client = _run(tmp_path, monkeypatch, FAST=True, **params)
  with pytest.raises(nbclient.exceptions.CellExecutionError):
    client.execute()
  code = [c for c in nb.cells if c.cell_type == "code"]
  errors = [
    (i, o)
    for i, c in enumerate(code)
    for o in c.outputs
    if o.output_type == "error"
  ]
  assert len(errors) == 1
  index, error = errors[0]
  assert "def stop(" in code[index].source  # the checking cell
  assert error.ename == "SystemExit"
  assert error.evalue.startswith("error: ") and expected in error.evalue
  assert len("\n".join(error.traceback).splitlines()) <= 4
  assert not any(c.outputs for c in code[index + 1 :])


def test_readme_badge_names_the_notebook():
  readme = (ROOT / "README.md").read_text()
  urls = re.findall(
    r"https://colab\.research\.google\.com/github/[^)\s]+", readme
  )
  assert urls
  for url in urls:
    path = url.split("/blob/main/", 1)[1]
    assert (ROOT / path).is_file(), url
    assert path == "notebooks/sampling_demo.ipynb"
