"""Child processes of the mesh: started in their own session, logged to files, and
always stopped: SIGTERM first, SIGKILL after a grace period, and the kernel's
parent-death signal if the launcher itself is killed, so nothing is left orphaned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
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
        fatal: re.Pattern[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """`fatal` matches a line by which the process says it has crashed while it still
        runs (failed()); `cwd` is its working directory (default: this process's)."""
        self.name = name
        self.log_path = log_path
        self._terminated = False
        self._fatal = fatal
        self._crashed = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self._read_at = log.tell()  # the log is appended to: this start's lines follow
            self._popen = subprocess.Popen(
                [*_DIE_WITH_PARENT, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        LOGGER.info("started %s (pid %d), log %s", name, self._popen.pid, log_path)

    @property
    def pid(self) -> int:
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen.poll() is None

    def failed(self) -> bool:
        """It has exited, or its log has said it crashed (`fatal`) since it started: a
        process can go on running for a while after that, not serving."""
        if not self.alive():
            return True
        if self._fatal is not None and not self._crashed:
            self._crashed = any(self._fatal.match(line) for line in self._new_lines())
        return self._crashed

    def _new_lines(self) -> list[str]:
        """The whole lines its log gained since the last call (since its start at first)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._read_at)
                data = log.read()
        except FileNotFoundError:
            return []
        whole = data.rfind(b"\n") + 1
        self._read_at += whole
        return data[:whole].decode("utf-8", errors="replace").splitlines()

    def kill(self) -> None:
        """SIGKILL to its process group, and waits for it: a crash, not a shutdown."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)
        self._popen.wait()

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
    """Polls `ready` until it holds; fails fast if the process fails first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.failed():
            raise RuntimeError(f"{process.name} failed:\n{process.log_tail()}")
        if ready():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{process.name} not ready after {timeout_s:.0f}s:\n{process.log_tail()}")
