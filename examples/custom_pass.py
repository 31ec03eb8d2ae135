"""Writing a custom pass, end to end (the tutorial in docs/passes.md, as a script).

It captures a small JAX function, defines two passes (a rewrite, `square-to-pow`, and an analysis,
`count-flops`), registers them, runs them from a pipeline string, lowers the result back to JAX and
checks that the numbers match the original function.

    python examples/custom_pass.py --size 64 --show-ir
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import shardkit as sk
from shardkit import passes
from shardkit.ir import Graph, Op, Params, Value

# -- 1. A rewrite pass: x * x  ->  integer_pow(x, y=2) --------------------------------------------


@passes.pattern("mul")
def square_to_pow(op: Op, rw: passes.Rewriter):
    """x * x -> x ** 2: one op reading x once instead of twice."""
    x, y = op.operands
    if x is not y:
        return None  # not our pattern: leave the op alone
    result = Value(op.result.type)
    return passes.Replace([result], [Op("integer_pow", (x,), (result,), Params({"y": 2}))])


@passes.pattern("log")
def log_of_exp(op: Op, rw: passes.Rewriter):
    """log(exp(x)) -> x, looking one op up the graph with rw.producer."""
    producer = rw.producer(op.operands[0])
    if producer is not None and producer.name == "exp":
        x = producer.operands[0]
        if passes.same_type(x, op.result):
            return [x]
    return None


@passes.register
@dataclass(frozen=True)
class SquareToPow(passes.Pass):
    """Rewrite x*x to x**2 and log(exp(x)) to x, everywhere (regions included)."""

    name = "square-to-pow"
    preserves = passes.ALL_PROPERTIES

    trace: bool = False  # an option: square-to-pow{trace=true}

    def run(self, graph: Graph, ctx: passes.PassContext) -> Graph:
        result = passes.apply_patterns(graph, [square_to_pow, log_of_exp], ctx=ctx, trace=self.trace)
        for fired in result.trace or ():
            ctx.diagnostics.note(f"fired {fired}")
        return result.graph


# -- 2. An analysis pass: FLOPs per op, cached for later passes and for the caller ---------------

ELEMENTWISE = {"add", "sub", "mul", "div", "max", "min", "neg", "exp", "log", "tanh", "logistic",
               "sin", "cos", "sqrt", "rsqrt", "integer_pow", "pow", "abs", "select_n"}


def op_flops(op: Op) -> int:
    """Floating-point operations of one op (a rough count: 2 per multiply-add)."""
    if op.name == "dot_general":
        (lhs_contracting, _), _ = op.params["dimension_numbers"]
        lhs = op.operands[0].type.shape
        depth = 1
        for d in lhs_contracting:
            depth *= lhs[d]
        return 2 * op.result.type.size * depth
    if op.name in ELEMENTWISE:
        return sum(r.type.size for r in op.results)
    if op.name.startswith("reduce_"):
        return op.operands[0].type.size
    if op.regions:
        inner = sum(sum(count_flops(region).values()) for region in op.regions)
        return inner * int(op.params.get("length", 1))  # a scan runs its body `length` times
    return 0


def count_flops(graph: Graph) -> dict[Op, int]:
    """FLOPs of every top-level op of `graph` (ops with regions include their bodies)."""
    return {op: op_flops(op) for op in graph.ops}


@passes.register
@dataclass(frozen=True)
class CountFlops(passes.Pass):
    """Count FLOPs per op; the table is cached in ctx.analyses and the top ops are reported as notes."""

    name = "count-flops"
    preserves = passes.ALL_PROPERTIES

    top: int = 3

    def run(self, graph: Graph, ctx: passes.PassContext) -> Graph:
        table = ctx.analyses.get(count_flops, graph)
        ctx.diagnostics.note(f"total: {sum(table.values()):,} FLOPs in {len(table)} ops")
        for op, flops in sorted(table.items(), key=lambda item: -item[1])[:self.top]:
            ctx.diagnostics.note(f"{flops:,} FLOPs", op=op)
        return graph  # an analysis returns the graph it was given


# -- 3. Use them: capture, run a pipeline string, lower, compare ----------------------------------


def model(x, w):
    h = jnp.tanh(x @ w)
    return jnp.sum(h * h) + jnp.sum(jnp.log(jnp.exp(h)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Define, register and run two custom shardkit passes.")
    parser.add_argument("--size", type=int, default=32, help="the matrices are size x size (default 32)")
    parser.add_argument("--pipeline", default="canonicalize,square-to-pow{trace=true},count-flops{top=3},dce",
                        help="the pipeline string to run")
    parser.add_argument("--show-ir", action="store_true", help="print the IR before and after")
    args = parser.parse_args(argv)

    x = jax.random.normal(jax.random.key(0), (args.size, args.size))
    w = jax.random.normal(jax.random.key(1), (args.size, args.size)) / args.size ** 0.5
    graph = sk.capture(model, x, w)

    ctx = passes.PassContext()
    pipeline = passes.Pipeline.parse(args.pipeline)
    optimized = pipeline.run(graph, ctx=ctx, verify=True)

    if args.show_ir:
        print("## captured\n" + str(graph))
        print("## after " + str(pipeline) + "\n" + str(optimized))
    for diagnostic in ctx.diagnostics:
        print(diagnostic)
    names = [op.name for op in optimized.walk()]
    print(f"ops: {graph.num_ops()} -> {optimized.num_ops()}; integer_pow: {names.count('integer_pow')}, "
          f"log: {names.count('log')}")

    expected = model(x, w)
    actual = sk.lower(optimized)(x, w)
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=1e-5)
    print(f"result {float(actual):.6f} matches jax ({float(expected):.6f})")


if __name__ == "__main__":
    main()
