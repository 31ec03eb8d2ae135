"""Checkpoints: restore onto other meshes and plans, corrupt/partial detection, bad input, no pickle."""
import pickle
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding

import shardkit as sk
from shardkit.train import CheckpointError, Checkpointer, CheckpointWarning, Trainer


class MLP(nnx.Module):
    def __init__(self, rngs, hidden=32):
        with nnx.use_eager_sharding(False):
            init = nnx.initializers.lecun_normal()
            self.fc1 = nnx.Linear(16, hidden, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")), rngs=rngs)
            self.fc2 = nnx.Linear(hidden, 8, kernel_init=nnx.with_partitioning(init, ("mlp", "embed")), rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.tanh(self.fc1(x)))


_new = {h: nnx.jit(lambda h=h: MLP(nnx.Rngs(0), h)) for h in (32, 64)}


def loss_fn(model, batch):
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)


def data(step):
    rng = np.random.default_rng([3, step])
    x = rng.normal(size=(16, 16)).astype(np.float32)
    return {"x": x, "y": np.cos(x[:, :8]).astype(np.float32)}


def trainer(axes, plan, hidden=32, opt=None):
    return Trainer(_new[hidden](), opt or optax.adam(1e-2), loss_fn, mesh=sk.make_mesh(axes), plan=plan)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run trained 3 steps on data=4 x model=2 with megatron, checkpointed at steps 2 and 3."""
    root = tmp_path_factory.mktemp("ckpt")
    source = trainer({"data": 4, "model": 2}, "megatron")
    source.fit(data, steps=3, workdir=root, checkpoint_every=2, progress=False)  # saves 2, then 3 at the end
    return root, jax.device_get(source.checkpoint_state())


def _same(a, b):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b))


def copy_of(saved, tmp_path):
    root, state = saved
    shutil.copytree(root / "checkpoints", tmp_path / "checkpoints")
    return Checkpointer(tmp_path / "checkpoints"), state


@pytest.mark.parametrize("axes,plan", [({"data": 8, "model": 1}, "fsdp"), ({"data": 2, "model": 4}, "fsdp+tp"),
                                        ({"data": 4, "model": 2}, "zero1")])
def test_restore_onto_another_mesh_and_plan_gives_identical_state(saved, axes, plan):
    root, state = saved
    target = trainer(axes, plan)
    restored = target.restore(root / "checkpoints")
    assert restored.step == 3 and target.state.step == 3
    assert restored.meta["plan"] == "megatron" and restored.meta["mesh"] == {"data": 4, "model": 2}
    assert restored.meta["data"] == {"position": 3}
    assert _same(jax.device_get(target.checkpoint_state()), state)
    for p, leaf in zip(jax.tree_util.tree_leaves(target.state.params), target.layout.leaves):
        assert p.sharding.is_equivalent_to(NamedSharding(target.mesh, leaf.params), p.ndim)
    target.step(data(3))  # and it keeps training under the new layout


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(saved, tmp_path):
    ckpt, state = copy_of(saved, tmp_path)
    assert ckpt.steps() == [2, 3] and ckpt.verify(3) is None
    files = sorted(p for p in (tmp_path / "checkpoints" / "3" / "state").rglob("*") if p.is_file()
                   and p.stat().st_size > 64 and "ocdbt.process_0/d" in str(p))
    victim = files[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    assert "checksum" in ckpt.verify(3)
    target = trainer({"data": 8, "model": 1}, "dp")
    with pytest.warns(CheckpointWarning, match=r"checkpoints/3 is corrupt"):
        restored = target.restore(ckpt)
    assert restored.step == 2


def test_partial_and_unreadable_checkpoints_are_skipped(saved, tmp_path):
    ckpt, _ = copy_of(saved, tmp_path)
    partial = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half_written").write_bytes(b"\0" * 10)
    latest = tmp_path / "checkpoints" / "3"
    (latest / "shardkit_manifest.json").unlink()        # as if killed before sealing: no manifest
    (latest / "state" / "_METADATA").write_text("{not json")
    target = trainer({"data": 4, "model": 2}, "fsdp")
    with pytest.warns(CheckpointWarning) as caught:
        restored = target.restore(ckpt)
    messages = " | ".join(str(w.message) for w in caught)
    assert "partial checkpoint" in messages and "4.orbax-checkpoint-tmp" in messages
    assert "checkpoints/3 is corrupt" in messages
    assert restored.step == 2


def test_all_checkpoints_bad_is_an_error_and_none_is_none(saved, tmp_path):
    ckpt, _ = copy_of(saved, tmp_path)
    for step in (2, 3):
        (tmp_path / "checkpoints" / str(step) / "state" / "_METADATA").write_text("garbage")
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no usable checkpoint"):
        trainer({"data": 8, "model": 1}, "dp").restore(ckpt)
    assert Checkpointer(tmp_path / "empty").restore({"params": {}}) is None
    with pytest.raises(CheckpointError, match="no finished checkpoint for step 7"):
        trainer({"data": 8, "model": 1}, "dp").restore(Checkpointer(tmp_path / "checkpoints"), step=7)


def test_checkpoint_from_an_incompatible_model_names_the_parameter(saved):
    root, _ = saved
    wider = trainer({"data": 4, "model": 2}, "dp", hidden=64)
    with pytest.raises(CheckpointError, match=r"parameter 'fc1/bias' has shape \(32,\) in the checkpoint "
                                              r"but \(64,\) in the model"):
        wider.restore(root / "checkpoints")
    sgd = trainer({"data": 4, "model": 2}, "dp", opt=optax.sgd(0.1))
    with pytest.raises(CheckpointError, match="optimizer state leaf"):
        sgd.restore(root / "checkpoints")


def test_restoring_never_unpickles(saved, monkeypatch):
    root, state = saved

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    target = trainer({"data": 8, "model": 1}, "fsdp")
    target.restore(root / "checkpoints")
    assert _same(jax.device_get(target.checkpoint_state()), state)


class Noisy(nnx.Module):
    """Model state beyond params: BatchNorm statistics and a dropout RNG stream (typed PRNG keys)."""

    def __init__(self, rngs):
        self.fc = nnx.Linear(16, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(16, 8, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(self.bn(self.fc(x))))


def test_model_state_and_rng_keys_survive_a_reshard(tmp_path):
    new = nnx.jit(lambda: Noisy(nnx.Rngs(1)))
    first = Trainer(new(), optax.adam(1e-2), loss_fn, mesh=sk.make_mesh({"data": 4, "model": 2}), plan="fsdp")
    losses = [r["loss"] for r in first.fit(data, steps=4, workdir=tmp_path, checkpoint_every=2, progress=False)]
    second = Trainer(new(), optax.adam(1e-2), loss_fn, mesh=sk.make_mesh({"data": 8}), plan="dp")
    second.restore(tmp_path / "checkpoints", step=2)
    assert int(second.state.rest["drop"]["rngs"]["count"][...]) == 2
    again = [r["loss"] for r in second.fit(data, steps=4, progress=False)]
    np.testing.assert_allclose(again, losses[2:], rtol=1e-5)


def test_a_fresh_run_in_a_used_workdir_replaces_the_old_checkpoints(tmp_path):
    trainer({"data": 8}, "dp").fit(data, steps=4, workdir=tmp_path, checkpoint_every=2, progress=False)
    with pytest.warns(UserWarning, match=r"removed checkpoints of an earlier run \(steps \[2, 4\]\)"):
        trainer({"data": 8}, "dp").fit(data, steps=1, workdir=tmp_path, checkpoint_every=2, progress=False)
    assert Checkpointer(tmp_path / "checkpoints").steps() == [1]
    with pytest.raises(CheckpointError, match="needs workdir"):
        trainer({"data": 8}, "dp").fit(data, steps=1, resume=True, progress=False)
