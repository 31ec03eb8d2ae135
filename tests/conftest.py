"""Test configuration: 8 simulated CPU devices, set before JAX is imported."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

import shardkit.passes  # noqa: E402

shardkit.passes.set_debug(True)  # verify the IR after every pass in every test


@pytest.fixture(scope="session")
def mesh():
    import shardkit as sk
    return sk.make_mesh({"data": 4, "model": 2})
