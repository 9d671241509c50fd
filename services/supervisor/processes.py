"""Child processes of the mesh: started in their own session, logged to files, and
always stopped: SIGTERM first, SIGKILL after a grace period, and the kernel's
parent-death signal if the launcher itself is killed, so nothing is left orphaned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

LOGGER = logging.getLogger(__name__)


# util-linux's setpriv sets the parent-death signal and execs the command, so no Python code
# runs between fork and exec (a preexec_fn could deadlock or crash beside gRPC's threads).
_DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "TERM", "--")


class Process:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._terminated = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                [*_DIE_WITH_PARENT, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        LOGGER.info("started %s (pid %d), log %s", name, self._popen.pid, log_path)

    @property
    def pid(self) -> int:
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen.poll() is None

    def wait(self, timeout_s: float | None = None) -> int:
        return self._popen.wait(timeout_s)

    def terminate(self) -> None:
        """SIGTERM, without waiting: the process drains and exits on its own. Once only: a
        second SIGTERM tells a service to exit without draining."""
        if self.alive() and not self._terminated:
            self._popen.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, grace_s: float = 10.0) -> int:
        """terminate(), then SIGKILL after `grace_s`; then whatever is left of its process
        group (reap_group); returns the exit code."""
        if self.alive():
            self.terminate()
            try:
                self._popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                LOGGER.warning("%s did not stop in %.0fs: killing it", self.name, grace_s)
                os.killpg(self._popen.pid, signal.SIGKILL)
                self._popen.wait()
        self.reap_group()
        return self._popen.returncode

    def reap_group(self) -> None:
        """SIGKILL to what is left of the process group of a process that has exited: the
        children a crash left behind (a Triton killed alone leaves its python-backend stubs,
        about 220 MB each, which ignore SIGTERM)."""
        if not self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def wait_until(
    ready: Callable[[], bool], process: Process, timeout_s: float, interval_s: float = 0.2
) -> None:
    """Polls `ready` until it holds; fails fast if the process exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited:\n{process.log_tail()}")
        if ready():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{process.name} not ready after {timeout_s:.0f}s:\n{process.log_tail()}")
