"""`shardkit launch -n N -- COMMAND...`: run COMMAND as N cooperating processes on this machine.

Each process gets the coordinator address (a free localhost port), the process count, its id and
its share of the CPU devices through the environment (see `distributed.py`); the script joins with
`sk.train.init_distributed()`. If any process fails, the others are stopped (SIGTERM, then SIGKILL
after a grace period) so a launch never hangs on a dead peer.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Sequence

from .distributed import LaunchInfo
from .errors import LaunchError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(info: LaunchInfo, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    env.update(info.env())
    return env


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def launch(command: Sequence[str], num_processes: int, *, devices: int = 8, grace_s: float = 10.0,
           timeout_s: float | None = None, env: dict[str, str] | None = None, log=sys.stderr) -> int:
    """Run `command` as `num_processes` processes sharing `devices` CPU devices; return the exit code
    (0 when every process succeeded, else the first failure's code)."""
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LaunchError("shardkit launch needs a command: shardkit launch -n 2 -- python train.py")
    if num_processes < 1:
        raise LaunchError(f"shardkit launch: -n must be at least 1, got {num_processes}")
    if devices % num_processes:
        raise LaunchError(f"shardkit launch: {devices} devices do not split evenly over {num_processes} "
                          f"processes; use --devices that is a multiple of -n")
    coordinator = f"127.0.0.1:{free_port()}"
    base = dict(os.environ if env is None else env)
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(num_processes):
            info = LaunchInfo(coordinator, num_processes, rank, devices // num_processes)
            try:
                procs.append(subprocess.Popen(command, env=_child_env(info, base), start_new_session=True))
            except OSError as e:
                raise LaunchError(f"shardkit launch could not start {command[0]!r}: {e}") from None
        return _watch(procs, grace_s, timeout_s, log)
    except KeyboardInterrupt:
        _stop(procs, grace_s)
        return 130
    finally:
        if any(p.poll() is None for p in procs):
            _stop(procs, grace_s)


def _watch(procs: list[subprocess.Popen], grace_s: float, timeout_s: float | None, log) -> int:
    started = time.monotonic()
    previous = signal.getsignal(signal.SIGTERM)

    def forward(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread
        previous = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                others = sum(1 for c in codes if c is None)
                print(f"shardkit launch: process {rank} exited with code {code}; stopping the other "
                      f"{others} process(es)", file=log, flush=True)
                _stop(procs, grace_s)
                return code if code > 0 else 128 - code
            if all(code == 0 for code in codes):
                return 0
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                print(f"shardkit launch: still running after {timeout_s:.0f}s; stopping all processes",
                      file=log, flush=True)
                _stop(procs, grace_s)
                return 124
            time.sleep(0.05)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
