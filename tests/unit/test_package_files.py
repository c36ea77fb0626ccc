"""The license and the citation metadata at the top of the repository."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _setup_keyword(name):
  """The literal value of setup.py's setup(name=...) keyword."""
  tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
  [value] = [
    ast.literal_eval(kw.value)
    for node in ast.walk(tree)
    if isinstance(node, ast.Call)
    for kw in node.keywords
    if kw.arg == name
  ]
  return value


def test_license_is_apache_2():
  text = (REPO / "LICENSE").read_text(encoding="utf-8")
  assert text.startswith("Copyright 2026 The boot_jax Authors.")
  assert "Apache License\n                           Version 2.0" in text
  assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
  # The whole text: its nine sections and the appendix.
  assert "9. Accepting Warranty or Additional Liability." in text
  assert "END OF TERMS AND CONDITIONS" in text
  assert "http://www.apache.org/licenses/LICENSE-2.0" in text
  assert _setup_keyword("license") == "Apache-2.0"


def test_citation_cff():
  text = (REPO / "CITATION.cff").read_text(encoding="utf-8")
  assert text.startswith("cff-version: 1.2.0\n")
  assert 'value: "arXiv:2306.05544"' in text
  try:
    import yaml  # noqa: PLC0415 - pyyaml is not a declared test dependency
  except ImportError:
    return
  cff = yaml.safe_load(text)
  assert cff["cff-version"] == "1.2.0"
  assert cff["type"] == "software" and cff["title"] == "boot_jax"
  assert cff["version"] == _setup_keyword("version")
  assert cff["license"] == "Apache-2.0"
  refs = {r["doi"]: r for r in cff["references"]}
  boot = refs["10.48550/arXiv.2306.05544"]
  assert boot["title"].startswith("BOOT: Data-free Distillation")
  assert boot["year"] == 2023
  assert [a["family-names"] for a in boot["authors"]] == [
    "Gu",
    "Zhai",
    "Zhang",
    "Liu",
    "Susskind",
  ]
  assert "arXiv:2306.05544" in [i["value"] for i in boot["identifiers"]]
  sid = refs["10.48550/arXiv.2404.04057"]
  assert sid["title"].startswith("Score identity Distillation")
  assert sid["year"] == 2024 and "ICML" in sid["conference"]["name"]
  assert "arXiv:2404.04057" in [i["value"] for i in sid["identifiers"]]


def _commands(text: str) -> list[str]:
  """The `python3 -m ...` commands of a shell text, continuations joined,
  `--quiet` dropped (CI's output choice, not a different command)."""
  joined = text.replace("\\\n", " ")
  out = []
  for line in joined.splitlines():
    line = line.strip()
    if line.startswith("python3 -m "):
      out.append(" ".join(w for w in line.split() if w != "--quiet"))
  return out


def test_the_readme_test_commands_are_cis():
  """The README's install and test commands are the ones .ci/run runs."""
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  block = readme.split('python3 -m pip install -e ".[test]"', 1)[1]
  block = 'python3 -m pip install -e ".[test]"' + block.split("```", 1)[0]
  ci = _commands((REPO / ".ci" / "run").read_text(encoding="utf-8"))
  ci = [c for c in ci if c != "python3 -m pip install --upgrade pip"]
  assert _commands(block) == ci
  assert ci[-1] == "python3 -m pytest -q tests"
