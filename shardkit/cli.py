"""The `shardkit` command line: `shardkit demo` (more commands arrive with later features)."""
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
    demo = sub.add_parser("demo", help="capture, print, lower and train a small MLP on 8 CPU devices")
    demo.add_argument("--steps", type=int, default=20, help="training steps (default 20)")
    demo.add_argument("--workdir", default="runs/demo", help="where metrics.jsonl is written")
    demo.add_argument("--mesh", type=_parse_mesh, default=None, help="mesh axes, e.g. data=4,model=2")
    demo.add_argument("--devices", type=int, default=8, help="simulated CPU devices (default 8)")
    demo.add_argument("--quiet-ir", action="store_true", help="do not print the captured IR")

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
    report = sk.explain(fn, mesh=mesh, in_specs=specs, pipeline=args.pipeline)(*shapes)
    from rich.console import Console
    Console().print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        _use_cpu_devices(args.devices)
        from shardkit.demo import DemoConfig, run_demo
        run_demo(DemoConfig(steps=args.steps, workdir=args.workdir, mesh=args.mesh,
                            show_ir=not args.quiet_ir))
        return 0
    if args.command == "explain":
        _use_cpu_devices(args.devices)
        return _explain(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
