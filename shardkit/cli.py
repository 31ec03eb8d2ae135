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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        _use_cpu_devices(args.devices)
        from shardkit.demo import DemoConfig, run_demo
        run_demo(DemoConfig(steps=args.steps, workdir=args.workdir, mesh=args.mesh,
                            show_ir=not args.quiet_ir))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
