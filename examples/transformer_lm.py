"""Train the small GPT-style character LM on the bundled corpus with any model-state plan.

    python examples/transformer_lm.py --plan fsdp+tp --steps 200
    python examples/transformer_lm.py --plan megatron --mesh data=2,model=4 --report
    python examples/transformer_lm.py --workdir runs/lm --checkpoint-every 50 --resume
    shardkit launch -n 2 -- python examples/transformer_lm.py --steps 50 --no-progress

`--report` prints `sk.train.plan_report` for every plan (memory and predicted traffic per step,
including the whole step's collectives predicted by shardkit) and exits without training.
"""
from __future__ import annotations

import argparse
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="fsdp+tp",
                        help="dp, zero1, zero2, zero3/fsdp, megatron or fsdp+tp (default fsdp+tp)")
    parser.add_argument("--mesh", default="data=4,model=2", help="mesh axes (default data=4,model=2)")
    parser.add_argument("--steps", type=int, default=200, help="train until this step (default 200)")
    parser.add_argument("--batch", type=int, default=32, help="global batch size (default 32)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (default 64)")
    parser.add_argument("--embed", type=int, default=64, help="model width (default 64)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3)")
    parser.add_argument("--eval-every", type=int, default=50, help="evaluate on held-out text every K steps")
    parser.add_argument("--workdir", default=None, help="metrics.jsonl and checkpoints/ go here")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="save every K steps (0: never)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    parser.add_argument("--report", action="store_true", help="print the plan report and exit")
    parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices when not launched")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import shardkit as sk
    from shardkit.train import parse_mesh, setup_devices
    setup_devices(args.devices)
    import jax
    import optax
    from flax import nnx
    from shardkit.train import TextBatches
    from shardkit.train.lm import CharTokenizer, GPTConfig, TinyGPT, generate, lm_loss, load_corpus

    text = load_corpus()
    tokenizer = CharTokenizer(text)
    tokens = tokenizer.encode(text)
    split = int(len(tokens) * 0.95)
    cfg = GPTConfig(tokenizer.vocab_size, args.seq_len, args.embed, args.heads, args.layers)
    model = nnx.jit(lambda: TinyGPT(cfg, nnx.Rngs(0)))()
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(args.lr))
    mesh = sk.make_mesh(parse_mesh(args.mesh))
    train_data = TextBatches(tokens[:split], args.batch, args.seq_len)
    eval_data = TextBatches(tokens[split:], args.batch, args.seq_len, seed=1)
    if args.report:
        sk.train.plan_report(args.plan, model, mesh, optimizer, loss_fn=lm_loss, batch=train_data(0))
        return 0
    trainer = sk.train.Trainer(model, optimizer, lm_loss, mesh=mesh, plan=args.plan)
    records = trainer.fit(train_data, steps=args.steps, workdir=args.workdir,
                          checkpoint_every=args.checkpoint_every or None, resume=args.resume,
                          eval_data=eval_data, eval_every=args.eval_every, eval_batches=2,
                          progress=not args.no_progress)
    sample = generate(trainer.model, tokenizer, "Shall I ", 100)
    if jax.process_index() == 0:
        if records:
            print(f"steps {records[0]['step']}..{records[-1]['step']}: loss {records[0]['loss']:.3f} -> "
                  f"{records[-1]['loss']:.3f}")
        print(sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
