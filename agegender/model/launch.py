"""Start an MXNet parameter-server job (ps-lite: one scheduler, servers, workers) on this machine or over
ssh, wait for the workers, and always clean up. The logic behind tools/launch.py."""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time


# The scheduler's port on a remote host: a port free here says nothing about the first host, so a job over
# ssh uses this fixed default (the one DMLC's own tracker starts from), or --port.
REMOTE_PORT = 9091


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def job_env(role: str, root_uri: str, port: int, num_workers: int, num_servers: int) -> dict[str, str]:
    """The DMLC_* variables every process of a job needs."""
    return {"DMLC_ROLE": role, "DMLC_PS_ROOT_URI": root_uri, "DMLC_PS_ROOT_PORT": str(port),
            "DMLC_NUM_WORKER": str(num_workers), "DMLC_NUM_SERVER": str(num_servers)}


def _pump(stream, tag: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(f"[{tag}] {line}")
        out.flush()


_HOST = re.compile(r"^(?:[A-Za-z0-9._-]+@)?(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])$")


def check_host(host: str) -> str:
    """A host name, IP address or user@host for ssh; anything else (an ssh option such as
    `-oProxyCommand=...`, spaces, shell characters) raises ValueError."""
    if not _HOST.match(host) or host.startswith("-"):
        raise ValueError(f"not a host name: {host!r}")
    return host


def host_address(host: str) -> str:
    """The address other processes reach a host line at: `user@host` -> `host`, `[::1]` -> `::1`."""
    return check_host(host).rsplit("@", 1)[-1].strip("[]")


def with_python(argv: list[str], python: str) -> list[str]:
    """A command whose program is a bare `python` / `python3` runs with `python` (the job's interpreter: the
    one running the launcher, or --python), so every process sees the same environment."""
    return [python, *argv[1:]] if argv and argv[0] in ("python", "python3") else list(argv)


class JobError(RuntimeError):
    """A process of the job other than a worker failed."""


class Job:
    """The processes of one job; `wait()` returns the workers' exit codes, `stop()` ends everything."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._threads: list[threading.Thread] = []

    def start(self, tag: str, argv: list[str], env: dict[str, str], host: str | None = None, cwd: str | None = None,
              out=None) -> None:
        if host in (None, "", "localhost", "127.0.0.1"):
            cmd, full_env = argv, {**os.environ, **env}
        else:  # ssh: the environment travels in the remote command line
            exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            remote = f"cd {shlex.quote(cwd or os.getcwd())} && {exports} {shlex.join(argv)}"
            check_host(host)
            cmd, full_env = ["ssh", "-o", "BatchMode=yes", "--", host, remote], dict(os.environ)
        proc = subprocess.Popen(cmd, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        t = threading.Thread(target=_pump, args=(proc.stdout, tag, out or sys.stdout), daemon=True)
        t.start()
        self.procs.append((tag, proc))
        self._threads.append(t)

    def wait(self, timeout: float | None) -> list[int]:
        """Wait for every worker (servers and scheduler exit after them); the exit codes of the workers
        that ended. Stops waiting at a failed worker (the others would wait forever on the kvstore);
        raises JobError when a server or the scheduler dies first (the workers would hang), TimeoutError
        past `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        workers = [(tag, proc) for tag, proc in self.procs if tag.startswith("worker")]
        others = [(tag, proc) for tag, proc in self.procs if not tag.startswith("worker")]
        while True:
            codes = [proc.poll() for _, proc in workers]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            for tag, proc in others:
                if proc.poll() not in (None, 0):
                    raise JobError(f"{tag} exited with code {proc.returncode} before the workers finished "
                                   "(its output is above)")
            if deadline is not None and time.monotonic() > deadline:
                late = next(tag for (tag, _), c in zip(workers, codes) if c is None)
                raise TimeoutError(f"{late} still running after {timeout:.0f} s")
            time.sleep(0.1)
        for t in self._threads:
            t.join(timeout=2)
        return [c for c in codes if c is not None]

    def stop(self) -> None:
        """Terminate whatever still runs (whole process groups), then kill what ignores that."""
        for _, proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


def launch(command: list[str], num_workers: int, num_servers: int = 1, hosts: list[str] | None = None,
           port: int = 0, timeout: float | None = None, cwd: str | None = None, out=None,
           python: str | None = None) -> list[int]:
    """Run `command` as `num_workers` workers with `num_servers` servers and a scheduler.

    Without `hosts` everything runs here on 127.0.0.1 (port 0: a free one). With `hosts` (`host` or
    `user@host`, reached by ssh, the project and `python` at the same paths on each), the scheduler runs on
    the first host (port 0: REMOTE_PORT) and servers and workers go round-robin. `python` (default: this
    interpreter) runs the servers and a worker command that starts with a bare `python`.
    Returns the workers' exit codes; every process is stopped before returning, also on error or timeout."""
    hosts = hosts or []
    root = host_address(hosts[0]) if hosts else "127.0.0.1"
    port = port or (REMOTE_PORT if hosts else free_port())
    python = python or sys.executable
    command = with_python(command, python)
    place = (lambda i: hosts[i % len(hosts)]) if hosts else (lambda i: None)  # noqa: E731
    server_argv = [python, "-c", "import mxnet"]  # importing mxnet with DMLC_ROLE set serves
    job = Job()
    try:
        job.start("scheduler", server_argv, job_env("scheduler", root, port, num_workers, num_servers),
                  place(0), cwd, out)
        for i in range(num_servers):
            job.start(f"server {i}", server_argv, job_env("server", root, port, num_workers, num_servers),
                      place(i), cwd, out)
        for i in range(num_workers):
            job.start(f"worker {i}", command, job_env("worker", root, port, num_workers, num_servers),
                      place(i), cwd, out)
        return job.wait(timeout)
    finally:
        job.stop()


__all__ = ["launch", "host_address", "with_python", "REMOTE_PORT", "job_env", "free_port", "check_host", "Job", "JobError"]
