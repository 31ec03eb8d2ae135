"""Start-up helpers for training scripts: join a launched run or simulate CPU devices; parse meshes."""
from __future__ import annotations

from .distributed import LaunchInfo, init_distributed
from .errors import PlanError


def setup_devices(cpu_devices: int = 8) -> LaunchInfo | None:
    """Call first in a training script: joins a `shardkit launch` run (which decides each process's
    devices), or else asks JAX for `cpu_devices` simulated CPU devices when running on CPU. Must run
    before anything touches JAX devices."""
    info = init_distributed()
    if info is None:
        import jax
        try:
            jax.config.update("jax_num_cpu_devices", int(cpu_devices))
        except RuntimeError:  # the backend is already up: keep its devices
            pass
    return info


def parse_mesh(text: str) -> dict[str, int]:
    """`"data=4,model=2"` -> `{"data": 4, "model": 2}`."""
    axes: dict[str, int] = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if not name.strip() or not size.strip().isdigit():
            raise PlanError(f"bad mesh {text!r}: write it like data=4,model=2")
        axes[name.strip()] = int(size)
    return axes
