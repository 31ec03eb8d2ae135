"""A small GPT-style character language model (flax NNX) and the tiny corpus shipped with shardkit.

The model annotates its parameters with logical axis names (`nnx.with_partitioning`): "vocab",
"embed", "heads" and "mlp", so tensor-parallel plans shard attention heads and MLP columns over the
model axis (Megatron layout) while FSDP plans shard the "embed" dimension over the data axes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def load_corpus() -> str:
    """The bundled public-domain corpus (poems and speeches, about 30 KB; see data/SOURCES.md)."""
    return resources.files("shardkit.train").joinpath("data/corpus.txt").read_text(encoding="utf-8")


class CharTokenizer:
    """Characters to ids and back; the vocabulary is the sorted set of characters of a text."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        unknown = sorted({c for c in text if c not in self.index})
        if unknown:
            raise ValueError(f"characters {unknown!r} are not in the tokenizer's vocabulary")
        return np.array([self.index[c] for c in text], dtype=np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a TinyGPT."""

    vocab_size: int
    seq_len: int = 64
    embed: int = 64
    heads: int = 4
    layers: int = 2
    mlp_ratio: int = 4


def _init(names, std: float = 0.02):
    return nnx.with_partitioning(nnx.initializers.normal(std), names)


class Block(nnx.Module):
    """Pre-norm transformer block: causal self-attention and a GELU MLP."""

    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        d = cfg.embed
        self.heads = cfg.heads
        self.ln1 = nnx.LayerNorm(d, scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)),
                                 bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)), rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, use_bias=False, kernel_init=_init(("embed", "heads")), rngs=rngs)
        self.proj = nnx.Linear(d, d, use_bias=False, kernel_init=_init(("heads", "embed")), rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)),
                                 bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)), rngs=rngs)
        self.up = nnx.Linear(d, cfg.mlp_ratio * d, kernel_init=_init(("embed", "mlp")),
                             bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("mlp",)), rngs=rngs)
        self.down = nnx.Linear(cfg.mlp_ratio * d, d, kernel_init=_init(("mlp", "embed")),
                               bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)), rngs=rngs)

    def __call__(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
        q, k, v = (z.reshape(b, t, h, d // h) for z in (q, k, v))
        scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(d // h).astype(np.float32)
        causal = jnp.tril(jnp.ones((t, t), dtype=bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        y = jnp.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))


class TinyGPT(nnx.Module):
    """A GPT-style decoder: token and position embeddings, `layers` blocks, tied output embedding."""

    def __init__(self, cfg: GPTConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        with nnx.use_eager_sharding(False):
            self.tok = nnx.Embed(cfg.vocab_size, cfg.embed, embedding_init=_init(("vocab", "embed")), rngs=rngs)
            self.pos = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (cfg.seq_len, cfg.embed)),
                                 out_sharding=(None, "embed"), eager_sharding=False)
            self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.layers)])
            self.ln = nnx.LayerNorm(cfg.embed, scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)),
                                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)), rngs=rngs)

    def __call__(self, tokens):
        x = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.tok.attend(self.ln(x))


def lm_loss(model: TinyGPT, batch) -> tuple[jax.Array, dict]:
    """Mean next-token cross-entropy of a {"inputs", "targets"} batch, with accuracy as a metric."""
    logits = model(batch["inputs"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["targets"])
    return loss, {"accuracy": accuracy}


@functools.lru_cache(maxsize=8)
def _sampler(graphdef, seq_len: int, length: int, temperature: float):
    """One compiled sampling loop per model structure, length and temperature."""

    @jax.jit
    def sample(state, window, count, key):
        model = nnx.merge(graphdef, state)

        def body(i, carry):
            window, count, key, out = carry
            logits = model(window[None, :])[0, count - 1]
            key, sub = jax.random.split(key)
            token = jax.random.categorical(sub, logits / max(temperature, 1e-4)).astype(jnp.int32)
            appended = window.at[jnp.minimum(count, seq_len - 1)].set(token)
            shifted = jnp.roll(window, -1).at[-1].set(token)
            window = jnp.where(count < seq_len, appended, shifted)
            return window, jnp.minimum(count + 1, seq_len), key, out.at[i].set(token)

        out = jnp.zeros(length, jnp.int32)
        return jax.lax.fori_loop(0, length, body, (window, count, key, out))[3]

    return sample


def generate(model: TinyGPT, tokenizer: CharTokenizer, prompt: str, length: int, *, temperature: float = 0.8,
             seed: int = 0) -> str:
    """Sample `length` characters after `prompt` on one device: one compiled loop over a sliding
    window of the last `seq_len` tokens."""
    cfg = model.cfg
    graphdef, state = nnx.split(model)
    if jax.process_count() > 1:  # gather every process's shards
        from jax.experimental import multihost_utils
        state = multihost_utils.process_allgather(state, tiled=True)
    state = jax.device_put(jax.device_get(state), jax.local_devices()[0])
    context = list(tokenizer.encode(prompt)[-cfg.seq_len:]) or [0]
    window = np.zeros(cfg.seq_len, np.int32)
    window[:len(context)] = context
    sample = _sampler(graphdef, cfg.seq_len, int(length), float(temperature))
    tokens = sample(state, window, jnp.int32(len(context)), jax.random.key(seed))
    return prompt + tokenizer.decode(np.asarray(tokens))
