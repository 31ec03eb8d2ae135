"""The train loop: learning on the bundled corpus, metrics.jsonl, evaluation, data positions."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import shardkit as sk
from shardkit.train import DataError, DataStream, TextBatches, Trainer, read_metrics
from shardkit.train.lm import CharTokenizer, GPTConfig, TinyGPT, generate, lm_loss, load_corpus


class Linear(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        return self.fc(x)


_new_linear = nnx.jit(lambda: Linear(nnx.Rngs(0)))


def mse(model, batch):
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)


def regression(step):
    rng = np.random.default_rng([7, step])
    x = rng.normal(size=(16, 8)).astype(np.float32)
    return {"x": x, "y": (x[:, :4] * 2.0).astype(np.float32)}


@pytest.mark.slow  # compiling a transformer step for 8 CPU devices takes ~30 s on 2 cores
def test_transformer_loss_decreases_on_the_bundled_corpus(tmp_path, mesh):
    text = load_corpus()
    assert 10_000 < len(text) < 400_000
    tok = CharTokenizer(text)
    assert tok.decode(tok.encode("Shall I compare")) == "Shall I compare"
    cfg = GPTConfig(tok.vocab_size, seq_len=32, embed=32, heads=2, layers=1)
    model = nnx.jit(lambda: TinyGPT(cfg, nnx.Rngs(0)))()
    tokens = tok.encode(text)
    trainer = Trainer(model, optax.adam(1e-2), lm_loss, mesh=mesh, plan="fsdp+tp")
    records = trainer.fit(TextBatches(tokens, 16, cfg.seq_len), steps=40, workdir=tmp_path,
                          eval_data=TextBatches(tokens, 16, cfg.seq_len, seed=9), eval_every=20, progress=False)
    losses = [r["loss"] for r in records]
    assert losses[0] > np.log(tok.vocab_size) - 0.5          # starts near uniform
    assert np.mean(losses[-5:]) < losses[0] - 1.0             # and learns
    logged = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in logged] == list(range(1, 41))
    assert all(isinstance(r["step"], int) and "loss" in r and r["tok_per_s"] > 0 for r in logged)
    assert [r["step"] for r in logged if "eval_loss" in r] == [20, 40]
    assert logged[-1]["eval_loss"] < logged[0]["loss"]
    sample = generate(trainer.model, tok, "The ", 20)
    assert sample.startswith("The ") and len(sample) == 24


def test_evaluate_matches_the_loss_function(mesh):
    trainer = Trainer(_new_linear(), optax.sgd(0.1), mse, mesh=mesh, plan="fsdp")
    batch = regression(0)
    expected = float(mse(_new_linear(), batch))
    assert abs(trainer.evaluate([batch])["loss"] - expected) < 1e-5
    assert trainer.state.step == 0


def test_iterator_sources_resume_by_replaying_or_their_own_state(tmp_path, mesh):
    class Counting:
        """An iterator with grain-style get_state/set_state."""

        def __init__(self):
            self.i = 0

        def __iter__(self):
            return self

        def __next__(self):
            self.i += 1
            return regression(self.i)

        def get_state(self):
            return {"i": self.i}

        def set_state(self, state):
            self.i = state["i"]

    stream = DataStream(Counting())
    first = [stream.next()["x"] for _ in range(3)]
    saved = stream.state()
    assert saved == {"position": 3, "iterator": {"i": 3}}
    again = DataStream(Counting())
    again.restore(saved)
    np.testing.assert_array_equal(again.next()["x"], regression(4)["x"])

    plain = DataStream(iter([regression(i) for i in range(6)]))
    with pytest.warns(UserWarning, match="replaying 2 batches"):
        plain.restore({"position": 2})
    np.testing.assert_array_equal(plain.next()["x"], regression(2)["x"])
    assert first[0].shape == (16, 8)

    short = Trainer(_new_linear(), optax.sgd(0.1), mse, mesh=mesh, plan="dp")
    with pytest.raises(DataError, match="ran out after 2 batches"):
        short.fit(iter([regression(0), regression(1)]), steps=5, progress=False)


def test_fit_continues_a_step_indexed_source_across_calls(mesh):
    one = Trainer(_new_linear(), optax.adam(1e-2), mse, mesh=mesh, plan="zero2")
    whole = [r["loss"] for r in one.fit(regression, steps=6, progress=False)]
    two = Trainer(_new_linear(), optax.adam(1e-2), mse, mesh=mesh, plan="zero2")
    parts = [r["loss"] for r in two.fit(regression, steps=3, progress=False)]
    parts += [r["loss"] for r in two.fit(regression, steps=6, progress=False)]
    assert parts == whole


def test_metrics_log_is_plain_json(tmp_path, mesh):
    trainer = Trainer(_new_linear(), optax.adam(1e-2), lambda m, b: (mse(m, b), {"twice": 2 * mse(m, b)}),
                      mesh=mesh, plan="dp")
    trainer.fit(regression, steps=2, workdir=tmp_path, progress=False)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["step"] == 1 and abs(records[0]["twice"] - 2 * records[0]["loss"]) < 1e-5
    assert records[0]["samples_per_s"] > 0


def test_explain_of_the_compiled_step_agrees_with_xla_for_data_parallel(mesh):
    trainer = Trainer(_new_linear(), optax.sgd(0.1), mse, mesh=sk.make_mesh({"data": 8}), plan="dp")
    report = trainer.explain(regression(0))
    kinds = {c.kind for c in report.compiled_collectives}
    assert kinds == {"all-reduce"}                   # gradients summed over the data axis
    assert report.disagreements() == []
    assert report.compiled_bytes > 0 and str(trainer.graph(regression(0))).startswith("graph @train_step")
