"""The `shardkit` command line: `shardkit demo`, `shardkit launch`, `shardkit explain`."""
from __future__ import annotations

import argparse
import sys


def _use_cpu_devices(count: int) -> None:
    """Ask JAX for `count` simulated CPU devices (must run before JAX picks its backend)."""
    import jax
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except Exception:  # the backend was already initialised; keep whatever devices exist
        pass


def _parse_mesh(text: str) -> dict:
    axes = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        if not name or not size.isdigit():
            raise argparse.ArgumentTypeError(f"bad mesh {text!r}: write it like data=4,model=2")
        axes[name.strip()] = int(size)
    return axes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small GPT on a data x model mesh with a model-state plan",
                          description="Train a small GPT-style character LM on the bundled corpus over 8 "
                                      "simulated CPU devices: shows the plan, the IR, predicted vs compiled "
                                      "collectives and a check against plain JAX, then trains, checkpoints "
                                      "and samples text.")
    demo.add_argument("--steps", type=int, default=300,
                      help="train until this many steps are done (default 300; counts restored steps)")
    demo.add_argument("--workdir", default="runs/demo", help="metrics.jsonl and checkpoints/ go here")
    demo.add_argument("--checkpoint-every", type=int, default=50, help="save every K steps (0: never)")
    demo.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    demo.add_argument("--mesh", type=_parse_mesh, default=None, help="mesh axes (default data=4,model=2)")
    demo.add_argument("--plan", default="fsdp+tp",
                      help="dp, zero1, zero2, zero3/fsdp, megatron or fsdp+tp (default fsdp+tp)")
    demo.add_argument("--devices", type=int, default=8, help="simulated CPU devices (default 8)")
    demo.add_argument("--eval-every", type=int, default=None, help="evaluate on held-out text every K steps")
    demo.add_argument("--show-ir", action="store_true", help="print the whole IR of the train step")
    demo.add_argument("--no-check", action="store_true", help="skip the differential check against plain JAX")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--samples", type=int, default=3, help="lines of generated text at the end (default 3)")
    demo.add_argument("--no-compile-cache", action="store_true",
                      help="do not keep compiled programs in WORKDIR/.jax_cache (reruns compile again)")

    launch = sub.add_parser("launch", help="run a command as N cooperating processes on this machine",
                            description="Start N copies of COMMAND that join one jax.distributed run over "
                                        "localhost (gloo CPU collectives), each with its share of the "
                                        "devices; the script calls sk.train.init_distributed(). If one "
                                        "process fails the others are stopped.")
    launch.add_argument("-n", "--num-processes", type=int, required=True, help="number of processes")
    launch.add_argument("--devices", type=int, default=8, help="CPU devices in all (default 8)")
    launch.add_argument("--grace", type=float, default=10.0,
                        help="seconds the others get to stop after one fails (default 10)")
    launch.add_argument("--timeout", type=float, default=None, help="stop everything after this many seconds")
    launch.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its arguments")

    explain = sub.add_parser("explain", help="show how a function is sharded and what it communicates",
                             description="Import module:function, capture it on example shapes, propagate "
                                         "shardings and print the sk.explain report.")
    explain.add_argument("target", help="module:function (the module must be importable)")
    explain.add_argument("--mesh", type=_parse_mesh, default={"data": 4, "model": 2},
                         help="mesh axes (default data=4,model=2)")
    explain.add_argument("--shapes", nargs="+", required=True,
                         help="one example argument per positional parameter, e.g. f32[64,32] f32[32,128]")
    explain.add_argument("--in-specs", nargs="*", default=None,
                         help="one spec per argument: comma-separated dims, '_' unsharded, 'a+b' for two "
                              "axes, '-' for no spec; e.g. data,_ _,model")
    explain.add_argument("--pipeline", default="default", help="pass pipeline (default: 'default')")
    explain.add_argument("--lowering", choices=["xla", "spmd"], default="xla",
                         help="xla: XLA partitions (default); spmd: shardkit's own partitioner")
    explain.add_argument("--auto", action="store_true",
                         help="choose shardings automatically (pipeline 'auto': the auto-shard ILP)")
    explain.add_argument("--memory-limit", type=int, default=0,
                         help="with --auto: per-device memory limit in bytes")
    explain.add_argument("--devices", type=int, default=8, help="simulated CPU devices (default 8)")
    return parser


def _parse_shape(text: str):
    import jax
    from shardkit.ir.dtypes import parse_dtype
    name, _, rest = text.partition("[")
    if not rest.endswith("]"):
        raise SystemExit(f"bad shape {text!r}: write it like f32[64,32]")
    dims = tuple(int(d) for d in rest[:-1].split(",") if d.strip())
    return jax.ShapeDtypeStruct(dims, parse_dtype(name))


def _parse_spec(text: str):
    from jax.sharding import PartitionSpec
    if text == "-":
        return None
    if text in ("", "()"):
        return PartitionSpec()
    entries = []
    for part in text.split(","):
        part = part.strip()
        entries.append(None if part in ("_", "None", "") else tuple(part.split("+")) if "+" in part else part)
    return PartitionSpec(*entries)


def _explain(args) -> int:
    import importlib
    import shardkit as sk
    module_name, _, attr = args.target.partition(":")
    if not attr:
        raise SystemExit("target must look like module:function")
    fn = getattr(importlib.import_module(module_name), attr)
    shapes = [_parse_shape(s) for s in args.shapes]
    specs = tuple(_parse_spec(s) for s in args.in_specs) if args.in_specs is not None else None
    mesh = sk.make_mesh(args.mesh)
    pipeline = args.pipeline
    if args.auto:
        pipeline = (f"canonicalize,cse,dce,auto-shard{{memory-limit={args.memory_limit}}}"
                    if args.memory_limit else "auto")
    report = sk.explain(fn, mesh=mesh, in_specs=specs, pipeline=pipeline, lowering=args.lowering)(*shapes)
    from rich.console import Console
    Console().print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from shardkit.train.distributed import init_distributed
        if init_distributed() is None:
            _use_cpu_devices(args.devices)
        if not args.no_compile_cache:
            import os
            import jax
            jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(args.workdir, ".jax_cache")))
        from shardkit.demo import DemoConfig, run_demo
        run_demo(DemoConfig(steps=args.steps, workdir=args.workdir, checkpoint_every=args.checkpoint_every,
                            resume=args.resume, mesh=args.mesh, plan=args.plan, eval_every=args.eval_every,
                            show_ir=args.show_ir, check=not args.no_check, progress=not args.no_progress,
                            samples=args.samples))
        return 0
    if args.command == "launch":
        from shardkit.train.launch import launch
        return launch(args.argv, args.num_processes, devices=args.devices, grace_s=args.grace,
                      timeout_s=args.timeout)
    if args.command == "explain":
        _use_cpu_devices(args.devices)
        return _explain(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
