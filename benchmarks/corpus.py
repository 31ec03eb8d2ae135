"""The propagation corpus: small models with sharding hints on their inputs and parameters only.

Shared by benchmarks/propagation.py (bytes, collectives and step time against plain `jax.jit` and a
hand-annotated expert version) and tests/test_propagation_corpus.py (numbers and communication).
Every model is plain JAX (optax for the optimizer). `build_corpus(mesh)` returns one `Case` per model
for a mesh with axes `data` and `model`:

- `fn(*args)`: the program; `args`: example arguments; `in_specs`: one spec pytree prefix per argument
  (the hints: inputs and parameters only, nothing inside `fn`);
- `expert(*args)`: the same program with `with_sharding_constraint` where an expert would put them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


@dataclass(frozen=True)
class Case:
    """One corpus model: the program, example arguments, input specs and an expert-annotated twin."""

    name: str
    description: str
    fn: Callable
    args: tuple
    in_specs: tuple
    expert: Callable
    rtol: float = 1e-4
    atol: float = 1e-5


def _is_spec(x) -> bool:
    return x is None or isinstance(x, P)


def in_shardings(mesh, case: Case) -> tuple:
    """`case.in_specs` as NamedShardings (pytree prefixes kept), for `jax.jit(in_shardings=...)`."""
    return tuple(jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s if s is not None else P()), spec,
                                        is_leaf=_is_spec) for spec in case.in_specs)


def place(mesh, case: Case) -> tuple:
    """The example arguments placed with their input shardings."""
    out = []
    for arg, sharding in zip(case.args, in_shardings(mesh, case)):
        if isinstance(sharding, NamedSharding):
            out.append(jax.device_put(arg, sharding))
        else:
            out.append(jax.tree_util.tree_map(lambda s, a: jax.device_put(a, s), sharding, arg,
                                              is_leaf=lambda x: isinstance(x, NamedSharding)))
    return tuple(out)


def _constrainer(mesh):
    def c(x, *spec):
        return lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))
    return c


def _constrain_tree(mesh, tree, specs):
    return jax.tree_util.tree_map(lambda s, x: lax.with_sharding_constraint(x, NamedSharding(mesh, s)),
                                  specs, tree, is_leaf=_is_spec)


def _normal(key, shape, scale=None):
    scale = scale if scale is not None else 1.0 / np.sqrt(shape[0] if len(shape) > 1 else 1.0)
    return jax.random.normal(key, shape, jnp.float32) * scale


def _keys(seed, n):
    return list(jax.random.split(jax.random.key(seed), n))


# -- 1. MLP, Megatron-style tensor parallelism: training gradients ----------------------------------

def _mlp_loss(params, x, y, h_hook=lambda h: h):
    h = h_hook(jax.nn.relu(x @ params["w1"]))
    return jnp.mean((h @ params["w2"] - y) ** 2)


def mlp_megatron(mesh) -> Case:
    k = _keys(1, 4)
    batch, d, hidden = 64, 64, 256
    params = {"w1": _normal(k[0], (d, hidden)), "w2": _normal(k[1], (hidden, d))}
    x, y = _normal(k[2], (batch, d), 1.0), _normal(k[3], (batch, d), 1.0)
    specs = ({"w1": P(None, "model"), "w2": P("model", None)}, P("data", None), P("data", None))
    c = _constrainer(mesh)

    def fn(params, x, y):
        return jax.value_and_grad(_mlp_loss)(params, x, y)

    def expert(params, x, y):
        loss, grads = jax.value_and_grad(
            lambda p: _mlp_loss(p, x, y, lambda h: c(h, "data", "model")))(params)
        return loss, _constrain_tree(mesh, grads, specs[0])

    return Case("mlp-megatron", "2-layer MLP, w1 columns / w2 rows over model, batch over data; "
                "loss and grads", fn, (params, x, y), specs, expert)


# -- 2. MLP, FSDP: parameters and batch sharded over every device -------------------------------------

def mlp_fsdp(mesh) -> Case:
    k = _keys(2, 4)
    batch, d, hidden = 256, 64, 128
    params = {"w1": _normal(k[0], (d, hidden)), "w2": _normal(k[1], (hidden, d))}
    x, y = _normal(k[2], (batch, d), 1.0), _normal(k[3], (batch, d), 1.0)
    fsdp = ("data", "model")
    specs = ({"w1": P(fsdp, None), "w2": P(fsdp, None)}, P(fsdp, None), P(fsdp, None))
    c = _constrainer(mesh)

    def fn(params, x, y):
        return jax.value_and_grad(_mlp_loss)(params, x, y)

    def expert(params, x, y):
        full = {name: c(w, None, None) for name, w in params.items()}  # all-gather the weights
        loss, grads = jax.value_and_grad(
            lambda p: _mlp_loss(p, x, y, lambda h: c(h, fsdp, None)))(full)
        return loss, _constrain_tree(mesh, grads, specs[0])  # reduce-scatter the gradients

    return Case("mlp-fsdp", "2-layer MLP, parameters and batch over data+model (FSDP); loss and grads",
                fn, (params, x, y), specs, expert)


# -- 3. transformer block: attention + MLP, heads over model (forward) --------------------------------

def _layer_norm(x, scale):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + 1e-5) * scale


def _block(p, x, c=None, causal=False):
    """Pre-norm block; `c(x, *spec)` constrains intermediates in the expert version."""
    c = c or (lambda x, *spec: x)
    h = _layer_norm(x, p["ln1"])
    q = c(jnp.einsum("bsd,dhk->bshk", h, p["wq"]), "data", None, "model", None)
    k = c(jnp.einsum("bsd,dhk->bshk", h, p["wk"]), "data", None, "model", None)
    v = c(jnp.einsum("bsd,dhk->bshk", h, p["wv"]), "data", None, "model", None)
    scores = jnp.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    if causal:
        n = x.shape[1]
        scores = jnp.where(jnp.tril(jnp.ones((n, n), bool)), scores, -1e9)
    attn = c(jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(scores, -1), v), "data", None, "model", None)
    x = c(x + jnp.einsum("bqhk,hkd->bqd", attn, p["wo"]), "data", None, None)
    h = c(jax.nn.gelu(_layer_norm(x, p["ln2"]) @ p["w1"]), "data", None, "model")
    return c(x + h @ p["w2"], "data", None, None)


def _block_params(key, d, heads, ff):
    k = jax.random.split(key, 6)
    dh = d // heads
    return {"ln1": jnp.ones((d,)), "ln2": jnp.ones((d,)),
            "wq": _normal(k[0], (d, heads, dh)), "wk": _normal(k[1], (d, heads, dh)),
            "wv": _normal(k[2], (d, heads, dh)), "wo": _normal(k[3], (heads, dh, d), 1 / np.sqrt(d)),
            "w1": _normal(k[4], (d, ff)), "w2": _normal(k[5], (ff, d))}


_BLOCK_SPECS = {"ln1": P(), "ln2": P(), "wq": P(None, "model", None), "wk": P(None, "model", None),
                "wv": P(None, "model", None), "wo": P("model", None, None), "w1": P(None, "model"),
                "w2": P("model", None)}


def transformer_block(mesh) -> Case:
    k = _keys(3, 2)
    batch, seq, d, heads, ff = 8, 32, 64, 4, 256
    params = _block_params(k[0], d, heads, ff)
    x = _normal(k[1], (batch, seq, d), 1.0)
    specs = (dict(_BLOCK_SPECS), P("data", None, None))

    def fn(params, x):
        return _block(params, x)

    def expert(params, x):
        return _block(params, x, _constrainer(mesh))

    return Case("transformer-block", "attention + MLP block, heads and MLP hidden over model, batch over "
                "data; forward", fn, (params, x), specs, expert)


# -- 4. 4-layer transformer LM: one adam training step -----------------------------------------------

def _lm_loss(params, tokens, c=None):
    c = c or (lambda x, *spec: x)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    x = c(jnp.take(params["embed"], inputs, axis=0) + params["pos"][None], "data", None, None)
    for layer in params["layers"]:
        x = _block(layer, x, c, causal=True)
    x = _layer_norm(x, params["ln_f"])
    logits = c(x @ params["unembed"], "data", None, "model")
    logp = jax.nn.log_softmax(logits, -1)
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logp.dtype)
    return -jnp.mean(jnp.sum(logp * onehot, -1))


_ADAM = optax.adam(1e-3)


def _lm_step(params, opt_state, tokens, loss_fn):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, opt_state = _ADAM.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _specs_like(tree, params, param_specs):
    """Specs for an optimizer state: a leaf whose path ends with a parameter's path gets its spec."""
    by_path = {jax.tree_util.keystr(path): spec for path, spec in
               jax.tree_util.tree_flatten_with_path(param_specs, is_leaf=_is_spec)[0]}

    def spec_of(path, leaf):
        text = jax.tree_util.keystr(path)
        for suffix, spec in by_path.items():
            if text.endswith(suffix) and getattr(leaf, "ndim", 0) == len(params_shape(params, suffix)):
                return spec
        return P()

    return jax.tree_util.tree_map_with_path(spec_of, tree)


def params_shape(params, keystr):
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jax.tree_util.keystr(path) == keystr:
            return leaf.shape
    return ()


def deep_transformer_lm_step(layers: int):
    """transformer-lm's adam training step (same widths) with `layers` blocks: (step fn, arguments);
    what the auto-shard scale test and benchmark solve."""
    k = _keys(9, layers + 4)
    batch, seq, d, heads, ff, vocab = 8, 33, 64, 4, 128, 256
    params = {"embed": _normal(k[0], (vocab, d), 0.02), "pos": _normal(k[1], (seq - 1, d), 0.02),
              "layers": [_block_params(k[4 + i], d, heads, ff) for i in range(layers)],
              "ln_f": jnp.ones((d,)), "unembed": _normal(k[2], (d, vocab))}
    tokens = jax.random.randint(k[3], (batch, seq), 0, vocab, jnp.int32)

    def step(params, opt_state, tokens):
        return _lm_step(params, opt_state, tokens, _lm_loss)

    return step, (params, _ADAM.init(params), tokens)


def transformer_lm(mesh) -> Case:
    k = _keys(4, 8)
    batch, seq, d, heads, ff, vocab, layers = 8, 33, 64, 4, 128, 256, 4
    params = {"embed": _normal(k[0], (vocab, d), 0.02), "pos": _normal(k[1], (seq - 1, d), 0.02),
              "layers": [_block_params(k[2 + i], d, heads, ff) for i in range(layers)],
              "ln_f": jnp.ones((d,)), "unembed": _normal(k[6], (d, vocab))}
    tokens = jax.random.randint(k[7], (batch, seq), 0, vocab, jnp.int32)
    param_specs = {"embed": P(), "pos": P(), "layers": [dict(_BLOCK_SPECS) for _ in range(layers)],
                   "ln_f": P(), "unembed": P(None, "model")}
    opt_state = _ADAM.init(params)
    opt_specs = _specs_like(opt_state, params, param_specs)
    specs = (param_specs, opt_specs, P("data", None))

    def fn(params, opt_state, tokens):
        return _lm_step(params, opt_state, tokens, _lm_loss)

    def expert(params, opt_state, tokens):
        c = _constrainer(mesh)
        loss_fn = lambda p, t: _lm_loss(p, t, c)  # noqa: E731
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        grads = _constrain_tree(mesh, grads, param_specs)
        updates, opt_state = _ADAM.update(grads, opt_state, params)
        new = _constrain_tree(mesh, optax.apply_updates(params, updates), param_specs)
        return new, _constrain_tree(mesh, opt_state, opt_specs), loss

    return Case("transformer-lm", "4-layer causal LM, Megatron heads/MLP/unembedding vocab over model, batch "
                "over data; one adam step (fwd+bwd+update)", fn, (params, opt_state, tokens), specs, expert,
                rtol=2e-3, atol=2e-5)


# -- 5. conv net, data parallel: training gradients ----------------------------------------------------

_CONV_DN = ("NHWC", "HWIO", "NHWC")


def _conv_loss(params, x, y):
    h = x
    for name in ("c1", "c2"):
        h = jax.nn.relu(lax.conv_general_dilated(h, params[name], (1, 1), "SAME", dimension_numbers=_CONV_DN))
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    logits = h.reshape(h.shape[0], -1) @ params["dense"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def conv_dp(mesh) -> Case:
    k = _keys(5, 5)
    batch, hw, cin, ch, classes = 32, 8, 3, 16, 10
    params = {"c1": _normal(k[0], (3, 3, cin, ch), 0.3), "c2": _normal(k[1], (3, 3, ch, ch), 0.1),
              "dense": _normal(k[2], ((hw // 2) ** 2 * ch, classes))}
    x = _normal(k[3], (batch, hw, hw, cin), 1.0)
    y = jax.random.randint(k[4], (batch,), 0, classes, jnp.int32)
    dp = ("data", "model")
    specs = ({"c1": P(), "c2": P(), "dense": P()}, P(dp), P(dp))

    def fn(params, x, y):
        return jax.value_and_grad(_conv_loss)(params, x, y)

    def expert(params, x, y):
        loss, grads = jax.value_and_grad(_conv_loss)(params, x, y)
        return loss, _constrain_tree(mesh, grads, specs[0])

    return Case("conv-dp", "2 conv layers + max-pool + dense, batch over data+model (data parallel); "
                "loss and grads", fn, (params, x, y), specs, expert)


# -- 6. mixture of experts: experts over `data`, expert hidden over `model` -------------------------

def _moe_loss(params, x, c=None):
    """GShard-style top-1 MoE with capacity: tokens in groups (over data), one-hot einsum dispatch."""
    c = c or (lambda x, *spec: x)
    experts = params["w1"].shape[0]
    groups, group_size, _ = x.shape
    capacity = 2 * group_size // experts
    gates = jax.nn.softmax(jnp.einsum("gsd,de->gse", x, params["router"]), -1)
    index = jnp.argmax(gates, -1)
    mask = jax.nn.one_hot(index, experts, dtype=x.dtype)                      # g s e
    position = (jnp.cumsum(mask, axis=1) - 1.0) * mask                        # slot within the expert
    keep = mask * (position < capacity)
    dispatch = keep[..., None] * jax.nn.one_hot(position.astype(jnp.int32), capacity, dtype=x.dtype)
    combine = dispatch * jnp.sum(gates * mask, -1)[..., None, None]           # g s e c
    expert_in = c(jnp.einsum("gsec,gsd->egcd", dispatch, x), None, "data", None, None)  # local
    expert_in = c(expert_in, "data", None, None, None)                         # all-to-all to the experts
    h = c(jax.nn.relu(jnp.einsum("egcd,edf->egcf", expert_in, params["w1"])), "data", None, None, "model")
    expert_out = c(jnp.einsum("egcf,efd->egcd", h, params["w2"]), "data", None, None, None)
    expert_out = c(expert_out, None, "data", None, None)                      # all-to-all back
    y = c(jnp.einsum("gsec,egcd->gsd", combine, expert_out), "data", None, None)
    return jnp.mean((y + x) ** 2)


def moe(mesh) -> Case:
    k = _keys(6, 4)
    groups, group_size, d, ff, experts = 8, 32, 32, 128, 4
    params = {"router": _normal(k[0], (d, experts)), "w1": _normal(k[1], (experts, d, ff)),
              "w2": _normal(k[2], (experts, ff, d))}
    x = _normal(k[3], (groups, group_size, d), 1.0)
    specs = ({"router": P(), "w1": P("data", None, "model"), "w2": P("data", "model", None)},
             P("data", None, None))

    def fn(params, x):
        return jax.value_and_grad(_moe_loss)(params, x)

    def expert(params, x):
        loss, grads = jax.value_and_grad(lambda p: _moe_loss(p, x, _constrainer(mesh)))(params)
        return loss, _constrain_tree(mesh, grads, specs[0])

    return Case("moe", "top-1 mixture of experts (one-hot einsum dispatch, capacity 2x), experts over "
                "data, expert hidden over model, token groups over data; loss and grads",
                fn, (params, x), specs, expert)


# -- 7. scan over layers: stacked Megatron MLP blocks, training gradients ----------------------------

def _scan_loss(params, x, y, c=None):
    c = c or (lambda x, *spec: x)

    def layer(h, w):
        a = c(jax.nn.relu(h @ w["w1"]), "data", "model")
        return c(h + a @ w["w2"], "data", None), None

    h, _ = lax.scan(layer, x, params)
    return jnp.mean((h - y) ** 2)


def scan_layers(mesh) -> Case:
    k = _keys(7, 4)
    layers, batch, d, hidden = 4, 64, 64, 128
    params = {"w1": _normal(k[0], (layers, d, hidden), 0.5 / np.sqrt(d)),
              "w2": _normal(k[1], (layers, hidden, d), 0.5 / np.sqrt(hidden))}
    x, y = _normal(k[2], (batch, d), 1.0), _normal(k[3], (batch, d), 1.0)
    specs = ({"w1": P(None, None, "model"), "w2": P(None, "model", None)}, P("data", None), P("data", None))

    def fn(params, x, y):
        return jax.value_and_grad(_scan_loss)(params, x, y)

    def expert(params, x, y):
        loss, grads = jax.value_and_grad(lambda p: _scan_loss(p, x, y, _constrainer(mesh)))(params)
        return loss, _constrain_tree(mesh, grads, specs[0])

    return Case("scan-layers", "4 residual Megatron MLP layers under lax.scan (stacked weights, hidden "
                "over model), batch over data; loss and grads", fn, (params, x, y), specs, expert)


BUILDERS: dict[str, Callable[[Any], Case]] = {
    "mlp-megatron": mlp_megatron,
    "mlp-fsdp": mlp_fsdp,
    "transformer-block": transformer_block,
    "transformer-lm": transformer_lm,
    "conv-dp": conv_dp,
    "moe": moe,
    "scan-layers": scan_layers,
}


def build_corpus(mesh, names=None) -> list[Case]:
    """One Case per model (all of them, or those named), for a mesh with axes `data` and `model`."""
    return [BUILDERS[name](mesh) for name in (names or BUILDERS)]
