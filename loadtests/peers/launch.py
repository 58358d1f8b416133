"""Each peer's own venv, and its server as a child process of the bench.

Usage::

    python = peer_python("kserve")        # .venv-peers/kserve, created from requirements-kserve.txt on first use
    with PeerServer("kserve", [str(python), "-m", "loadtests.peers.kserve_peer", ...],
                    ready_url="http://127.0.0.1:9001/v2/health/ready", log_file=out / "kserve.log") as server:
        ...

A venv is made anew for each version of its requirements file (its hash is the stamp) and reused after; the
project's own venv never sees a peer's dependencies. Servers run with the repository on ``PYTHONPATH``, so
they import the digits package from this checkout, and stop with their whole session (ManagedProcess).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import httpx

from services.runtime.processes import ManagedProcess
from services.settings import REPO_ROOT

VENVS = REPO_ROOT / ".venv-peers"
HERE = Path(__file__).parent


def requirements(peer: str) -> Path:
    return HERE / f"requirements-{peer}.txt"


def peer_python(peer: str, say: Callable[[str], None] = print) -> Path:
    """The Python of the peer's venv, created (with pip's progress shown) when missing or out of date."""
    pins = requirements(peer)
    venv = VENVS / peer
    python = venv / "bin" / "python"
    stamp = venv / f".installed-{hashlib.sha1(pins.read_bytes()).hexdigest()[:12]}"
    if stamp.exists() and python.exists():
        return python
    say(f"[peers] {peer}: installing {pins.relative_to(REPO_ROOT)} into {venv.relative_to(REPO_ROOT)} "
        "(first use, or the pins changed; a few minutes) ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)  # no package of old pins stays
    cmd = [str(python), "-m", "pip", "install", "--progress-bar", "off", "--no-input", "--disable-pip-version-check",
           "-r", str(pins)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as pip:
        for line in pip.stdout:
            if line.startswith(("Collecting", "Installing", "Successfully", "ERROR")):
                say(f"[peers] {peer}: {line.rstrip()}")
    if pip.returncode != 0:
        raise RuntimeError(f"pip could not install {pins} into {venv} (exit {pip.returncode}); see the lines above")
    stamp.touch()
    say(f"[peers] {peer}: {venv.relative_to(REPO_ROOT)} ready")
    return python


class PeerServer(ManagedProcess):
    """A peer's server: ready once ``ready_url`` answers 200."""

    startup_timeout_s = 120.0
    ready_interval_s = 0.5

    def __init__(self, what: str, argv: list[str], *, ready_url: str, log_file: Path,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(log_file, cwd=log_file.parent)
        self.what, self._argv, self.ready_url, self.env = what, argv, ready_url, env or {}

    def argv(self) -> list[str]:
        return self._argv

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
        return {**env, "PYTHONPATH": str(REPO_ROOT), **self.env}

    def ready(self) -> bool:
        return httpx.get(self.ready_url, timeout=2).status_code == 200


if __name__ == "__main__":  # `make bench`: the peers' venvs come from PyPI, before the loopback-only namespace
    for name in sys.argv[1:] or ("kserve", "bentoml"):
        peer_python(name)
