"""Joining a multi-process run: `init_distributed()` at the top of a training script.

`shardkit launch -n N -- COMMAND` starts N copies of COMMAND and tells each one, through the
environment variables below, where the coordinator is, how many processes there are, which one it
is and how many CPU devices it owns. `init_distributed()` reads them, selects gloo CPU collectives
and calls `jax.distributed.initialize`, so every process sees one global mesh. Without them it is a
no-op (a plain single-process run), unless `cluster=True` asks JAX to detect a SLURM / Kubernetes /
MPI cluster itself (`jax.distributed.initialize()` with no arguments).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from .errors import LaunchError

COORDINATOR = "SHARDKIT_COORDINATOR_ADDRESS"
NUM_PROCESSES = "SHARDKIT_NUM_PROCESSES"
PROCESS_ID = "SHARDKIT_PROCESS_ID"
LOCAL_DEVICES = "SHARDKIT_LOCAL_DEVICE_COUNT"


@dataclass(frozen=True)
class LaunchInfo:
    """Where a launched process belongs: coordinator address, process count and id, local devices."""

    coordinator: str
    num_processes: int
    process_id: int
    local_devices: int

    def env(self) -> dict[str, str]:
        return {COORDINATOR: self.coordinator, NUM_PROCESSES: str(self.num_processes),
                PROCESS_ID: str(self.process_id), LOCAL_DEVICES: str(self.local_devices)}

    @staticmethod
    def from_env(environ: Mapping[str, str]) -> "LaunchInfo | None":
        if COORDINATOR not in environ:
            return None
        try:
            return LaunchInfo(environ[COORDINATOR], int(environ[NUM_PROCESSES]), int(environ[PROCESS_ID]),
                              int(environ.get(LOCAL_DEVICES, "1")))
        except (KeyError, ValueError) as e:
            raise LaunchError(f"incomplete shardkit launch environment ({e}); start the script with "
                              f"`shardkit launch -n N -- ...` or unset {COORDINATOR}") from None


_INITIALIZED: list[LaunchInfo] = []


def init_distributed(*, cluster: bool = False, environ: Mapping[str, str] | None = None,
                     timeout_s: int = 120) -> LaunchInfo | None:
    """Join the multi-process run this process was launched into (see module docs).

    Call it before anything touches JAX devices. Returns the LaunchInfo, or None when running alone.
    """
    import jax
    info = LaunchInfo.from_env(os.environ if environ is None else environ)
    if info is None:
        if cluster:
            jax.distributed.initialize()
        return None
    if _INITIALIZED:
        return _INITIALIZED[0]
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", info.local_devices)
    jax.distributed.initialize(info.coordinator, num_processes=info.num_processes,
                               process_id=info.process_id, initialization_timeout=timeout_s)
    _INITIALIZED.append(info)
    return info


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes logs and metrics)."""
    import jax
    return jax.process_index() == 0
