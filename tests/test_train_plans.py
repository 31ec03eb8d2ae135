"""Model-state plans: resolution, bad input, plan_report, and differential checks of every plan
against single-device training (same first-step loss, gradients and updated parameters)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import shardkit as sk
from shardkit.train import DataError, Placement, Plan, PlanError, Trainer, plan_report

PLANS = ["dp", "zero1", "zero2", "zero3", "fsdp", "megatron", "fsdp+tp"]


class MLP(nnx.Module):
    """A two-layer MLP whose params carry logical axis names (Megatron: fc1 column, fc2 row)."""

    def __init__(self, rngs: nnx.Rngs, din: int = 16, hidden: int = 32, dout: int = 8):
        init = nnx.initializers.lecun_normal()
        with nnx.use_eager_sharding(False):
            self.fc1 = nnx.Linear(din, hidden, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")),
                                  bias_init=nnx.with_partitioning(nnx.initializers.normal(0.1), ("mlp",)),
                                  rngs=rngs)
            self.fc2 = nnx.Linear(hidden, dout, kernel_init=nnx.with_partitioning(init, ("mlp", "embed")),
                                  bias_init=nnx.with_partitioning(nnx.initializers.normal(0.1), ("embed",)),
                                  rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.gelu(self.fc1(x)))


def loss_fn(model, batch):
    pred = model(batch["x"])
    return jnp.mean((pred - batch["y"]) ** 2), {"mean_pred": jnp.mean(pred)}


_new_model = nnx.jit(lambda: MLP(nnx.Rngs(0)))  # one compile for every model these tests build


def make_model():
    return _new_model()


def make_batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return {"x": x, "y": np.sin(x[:, :8]).astype(np.float32)}


def spec_of(trainer, name, role):
    return next(getattr(leaf, role) for leaf in trainer.layout.leaves if leaf.name == name)


def test_named_plans_resolve_to_expected_layouts(mesh):
    model = make_model()
    params = nnx.split(model, nnx.Param, ...)[1]
    layout = lambda plan: {leaf.name: leaf for leaf in sk.train.get_plan(plan).layout(params, mesh).leaves}
    k = "fc1/kernel"  # (16, 32): ("embed", "mlp")
    assert layout("dp")[k].params == P() and layout("dp")[k].opt_state == P()
    assert layout("zero1")[k].params == P() and layout("zero1")[k].grads == P()
    assert layout("zero1")[k].opt_state == P(None, "data")          # largest divisible dim
    assert layout("zero2")[k].grads == P(None, "data")
    assert layout("fsdp")[k].params == P(None, "data") and layout("fsdp")[k].compute == P()
    assert layout("zero3")[k] == layout("fsdp")[k]
    assert layout("megatron")[k].params == P(None, "model")        # column parallel from "mlp"
    assert layout("megatron")["fc2/kernel"].params == P("model")   # row parallel
    assert layout("megatron")["fc2/bias"].params == P()            # "embed" is not split by TP
    assert layout("fsdp+tp")[k].params == P("data", "model")
    assert layout("fsdp+tp")[k].compute == P(None, "model")


def test_logical_axis_rules_and_explicit_layouts(mesh):
    params = nnx.split(make_model(), nnx.Param, ...)[1]
    rules = sk.axis_rules({"mlp": "model", "embed": "data"})
    leaves = {l.name: l for l in Plan("logical", params=rules, compute=sk.axis_rules({"mlp": "model"}))
              .layout(params, mesh).leaves}
    assert leaves["fc1/kernel"].params == P("data", "model")
    assert leaves["fc1/kernel"].compute == P(None, "model")
    assert leaves["fc2/bias"].params == P("data")
    by_fn = Plan("fn", params=lambda name, shape: P("model") if name.endswith("kernel") else P())
    assert {l.name: l.params for l in by_fn.layout(params, mesh).leaves}["fc2/kernel"] == P("model")
    tree = jax.tree_util.tree_map(lambda x: P(*([None] * (x.ndim - 1)), "data") if x.ndim else P(), params)
    explicit = {l.name: l.params for l in Plan("tree", params=tree).layout(params, mesh).leaves}
    assert explicit["fc1/kernel"] == P(None, "data") and explicit["fc1/bias"] == P("data")
    partial = Plan("partial", opt_state=Placement(shard=("model",)))
    assert {l.name: l.opt_state for l in partial.layout(params, mesh).leaves}["fc1/kernel"] == P(None, "model")


def test_plan_bad_input_errors_say_what_and_where(mesh):
    params = nnx.split(make_model(), nnx.Param, ...)[1]
    with pytest.raises(PlanError, match="'dp'.*does not have"):
        Plan("x", data_axes=("dp",)).layout(params, mesh)
    with pytest.raises(PlanError, match="model axis"):
        sk.train.get_plan("megatron").layout(params, sk.make_mesh({"data": 8}))
    with pytest.raises(PlanError, match="'nope'"):
        Plan("x", opt_state=Placement(shard=("nope",))).layout(params, mesh)
    with pytest.raises(PlanError, match="fc2/bias.*size 8.*3 uneven"):
        Plan("x", params=lambda name, shape: P("data") if name == "fc2/bias" else P()).layout(
            params, sk.make_mesh({"data": 3}))
    with pytest.raises(PlanError, match="fc1/kernel.*'model' twice"):
        Plan("x", params=lambda name, shape: P("model", "model") if len(shape) == 2 else P()).layout(params, mesh)
    with pytest.raises(PlanError, match="unknown plan 'zero9'.*fsdp"):
        sk.train.get_plan("zero9")


def test_batch_not_divisible_by_data_axes(mesh):
    trainer = Trainer(make_model(), optax.adam(1e-3), loss_fn, mesh=mesh, plan="dp")
    with pytest.raises(DataError, match="batch size 30.*multiple of 4"):
        trainer.step(make_batch(30))


@pytest.fixture(scope="module")
def reference():
    """Plain single-device loss, grads and one Adam step on make_batch()."""
    batch = make_batch()
    graphdef, params, rest = nnx.split(make_model(), nnx.Param, ...)
    params = jax.device_put(params, jax.devices()[0])

    @jax.jit
    def run(p):
        loss, grads = jax.value_and_grad(lambda q: loss_fn(nnx.merge(graphdef, q, rest), batch)[0])(p)
        opt = optax.adam(1e-2)
        updates, _ = opt.update(grads, opt.init(p), p)
        return loss, grads, optax.apply_updates(p, updates)

    return run(params)


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _device_bytes(tree):
    return sum(x.addressable_shards[0].data.nbytes for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("plan", PLANS)
def test_every_plan_matches_single_device_and_its_report(mesh, plan, reference):
    batch = make_batch()
    ref_loss, ref_grads, ref_params = reference
    trainer = Trainer(make_model(), optax.adam(1e-2), loss_fn, mesh=mesh, plan=plan)
    loss, grads = trainer.loss_and_grads(batch)
    assert abs(float(loss) - float(ref_loss)) < 1e-6
    assert _max_diff(grads, ref_grads) < 1e-5
    for g, leaf in zip(jax.tree_util.tree_leaves(grads), trainer.layout.leaves):   # grads laid out per plan
        assert g.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, leaf.grads), g.ndim)
    row = plan_report(plan, make_model(), mesh, optax.adam(1e-2), show=False)[sk.train.get_plan(plan).name]
    assert row.grads_bytes == _device_bytes(grads)
    metrics = trainer.step(batch)
    assert abs(float(metrics["loss"]) - float(ref_loss)) < 1e-6
    assert _max_diff(trainer.state.params, ref_params) < 1e-5
    assert row.params_bytes == _device_bytes(trainer.state.params)
    assert row.opt_state_bytes == _device_bytes(trainer.state.opt_state)
    for p, leaf in zip(jax.tree_util.tree_leaves(trainer.state.params), trainer.layout.leaves):
        assert p.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, leaf.params), p.ndim)


def test_plan_report_table_and_step_communication(mesh):
    report = plan_report("fsdp+tp", make_model(), mesh, show=False, loss_fn=loss_fn, batch=make_batch())
    text = str(report)
    for name in ("fsdp+tp", "dp", "zero1", "zero2", "fsdp", "megatron"):
        assert name in text
    assert report["dp"].total_bytes > report["fsdp"].total_bytes > report["fsdp+tp"].total_bytes
    assert report["dp"].comm["grad all-reduce"] > 0 and report["dp"].comm["param all-gather"] == 0
    assert report["fsdp"].comm["param all-gather"] > 0 and report["fsdp"].comm["grad reduce-scatter"] > 0
    assert all(row.step_comm_bytes is not None and row.step_comm_bytes > 0 for row in report.rows)
    small = plan_report("dp", make_model(), sk.make_mesh({"data": 8}), show=False)
    assert small["megatron"].error and "model axis" in small["megatron"].error


def test_transformer_logical_names_give_megatron_and_fsdp_layouts(mesh):
    from shardkit.train.lm import GPTConfig, TinyGPT
    model = nnx.eval_shape(lambda: TinyGPT(GPTConfig(vocab_size=40, seq_len=16, embed=32, heads=4, layers=1),
                                           nnx.Rngs(0)))  # shapes are all a layout needs
    params = nnx.split(model, nnx.Param, ...)[1]
    leaves = {l.name: l for l in sk.train.get_plan("fsdp+tp").layout(params, mesh).leaves}
    assert leaves["blocks/0/up/kernel"].params == P("data", "model")
    assert leaves["blocks/0/up/kernel"].compute == P(None, "model")
    assert leaves["blocks/0/down/kernel"].compute == P("model")
    assert leaves["tok/embedding"].compute == P("model")
    assert leaves["blocks/0/ln1/scale"].compute == P()
