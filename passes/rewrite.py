"""A greedy pattern-rewrite driver: patterns matched by op name, applied with a worklist until nothing changes.

A pattern is a function `(op, rewriter) -> replacement | None`. The replacement is a sequence of
values (one per result of `op`) or a `Replace(values, new_ops)` when the pattern builds new ops,
which are inserted before `op`. The driver replaces every use of the op's results, erases the op
when it is pure, revisits the users of what changed, and stops when the worklist is empty:

    @pattern("mul")
    def mul_by_one(op, rw):
        x, y = op.operands
        if rw.splat(y) == 1 and same_type(x, op.result):
            return [x]

    result = apply_patterns(graph, [mul_by_one], trace=True)
    result.graph, result.fired, result.trace

Patterns compose: any iterable of patterns (or PatternSets) may be passed, and `set_a + set_b`
concatenates. Each op's candidates are tried in order of `benefit` (higher first); the first
pattern that returns a replacement wins. Regions are rewritten first (innermost first) when
`recurse=True`; they are closed, so a region is rewritten as a graph of its own.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from shardkit.ir import Graph, Op, Value
from shardkit.ir.params import ArrayValue
from shardkit.ir.printer import type_text

from .effects import is_pure
from .errors import RewriteError

@dataclass(frozen=True)
class Replace:
    """What a pattern returns: new values for the op's results and the new ops that define them."""

    values: tuple[Value, ...]
    new_ops: tuple[Op, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))
        object.__setattr__(self, "new_ops", tuple(self.new_ops))


class Pattern:
    """A named rewrite for ops called one of `op_names` (None: any op); `fn(op, rewriter)` does the work."""

    def __init__(self, fn: Callable[[Op, "Rewriter"], Any], op_names: Sequence[str] | None = None,
                 name: str | None = None, benefit: int = 1):
        self.fn = fn
        self.op_names = tuple(op_names) if op_names is not None else None
        self.name = name or getattr(fn, "__name__", "pattern")
        self.benefit = benefit

    def __call__(self, op: Op, rewriter: "Rewriter"):
        return self.fn(op, rewriter)

    def __repr__(self) -> str:
        ops = "*" if self.op_names is None else "|".join(self.op_names)
        return f"Pattern({self.name}, on {ops})"


def pattern(*op_names: str, name: str | None = None, benefit: int = 1) -> Callable[[Callable], Pattern]:
    """Decorator: turn `fn(op, rewriter)` into a Pattern for the named ops (no names: every op)."""

    def wrap(fn: Callable) -> Pattern:
        return Pattern(fn, op_names or None, name=name, benefit=benefit)

    return wrap


class PatternSet:
    """An ordered collection of patterns; `+` composes sets, iteration flattens."""

    def __init__(self, patterns: Iterable[Pattern | "PatternSet"] = ()):
        flat: list[Pattern] = []
        for p in patterns:
            if isinstance(p, PatternSet):
                flat.extend(p.patterns)
            elif isinstance(p, Pattern):
                flat.append(p)
            else:
                raise RewriteError(f"{p!r} is not a Pattern; decorate the function with "
                                   f"@shardkit.passes.pattern('op_name')")
        self.patterns: tuple[Pattern, ...] = tuple(flat)

    def __add__(self, other: Iterable[Pattern]) -> "PatternSet":
        return PatternSet([self, *PatternSet(other).patterns])

    def __iter__(self):
        return iter(self.patterns)

    def __len__(self) -> int:
        return len(self.patterns)


@dataclass(frozen=True)
class Fired:
    """One trace entry: which pattern rewrote which op (with the op's position at the time)."""

    pattern: str
    op: str
    depth: int = 0

    def __str__(self) -> str:
        return f"{'  ' * self.depth}{self.pattern} on {self.op}"


@dataclass
class RewriteResult:
    """The rewritten graph, whether anything changed, how often each pattern fired, and the trace."""

    graph: Graph
    changed: bool
    rewrites: int = 0
    erased: int = 0
    fired: dict[str, int] = field(default_factory=dict)
    trace: list[Fired] | None = None


class _Node:
    __slots__ = ("op", "prev", "next", "alive", "queued")

    def __init__(self, op):
        self.op = op
        self.prev = self.next = None
        self.alive = True
        self.queued = False


class Rewriter:
    """What a pattern sees besides the op: producers and users of values, constants, the pass context."""

    def __init__(self, ctx=None):
        self.ctx = ctx
        self._producer: dict[Value, _Node] = {}
        self._uses: dict[Value, int] = {}
        self._users: dict[Value, list[_Node]] = {}
        self._outputs: list[Value] = []

    def producer(self, value: Value) -> Op | None:
        """The op that defines `value` (None for a graph input)."""
        node = self._producer.get(value)
        return node.op if node is not None and node.alive else None

    def users(self, value: Value) -> list[Op]:
        """The live ops that use `value` (each once)."""
        seen, out = set(), []
        for node in self._users.get(value, ()):
            if node.alive and id(node) not in seen and value in node.op.operands:
                seen.add(id(node))
                out.append(node.op)
        return out

    def use_count(self, value: Value) -> int:
        """How many operand slots and graph outputs use `value`."""
        return self._uses.get(value, 0)

    def is_output(self, value: Value) -> bool:
        """Whether `value` is one of the graph's outputs."""
        return any(v is value for v in self._outputs)

    def constant(self, value: Value) -> np.ndarray | None:
        """The numbers of `value` when a `constant` op defines it (None otherwise, and for PRNG keys)."""
        op = self.producer(value)
        if op is None or op.name != "constant":
            return None
        held = op.params.get("value")
        return held.array if isinstance(held, ArrayValue) else None

    def splat(self, value: Value):
        """The single number every element of `value` equals, when that is known statically, else None.

        Known for constants whose elements are all equal and for broadcasts of such a constant.
        """
        op = self.producer(value)
        while op is not None and op.name == "broadcast_in_dim" and len(op.operands) == 1:
            value = op.operands[0]
            op = self.producer(value)
        array = self.constant(value)
        if array is None or array.size == 0:
            return None
        first = array.reshape(-1)[0]
        if array.size > 1 and not np.all(array == first):
            return None
        return first.item()


def same_type(value: Value, result: Value) -> bool:
    """Whether `value` can stand in for `result`: same shape and dtype, and no sharding is lost."""
    a, b = value.type, result.type
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return b.sharding is None or b.sharding == a.sharding


def apply_patterns(graph: Graph, patterns: Iterable[Pattern], *, ctx=None, recurse: bool = True,
                   erase_dead: bool = False, max_rewrites: int | None = None,
                   trace: bool = False) -> RewriteResult:
    """Rewrite `graph` greedily with `patterns` until no pattern applies.

    erase_dead: also erase pure ops whose results are unused. max_rewrites bounds the number of
    rewrites per graph (each region adds its own allowance; default 10 per op plus 1000) and raises
    RewriteError when patterns keep firing (a cycle). trace: record every rewrite in
    `result.trace` for debugging. Ops that patterns create are matched too, but regions they
    carry are not rewritten again.
    """
    pset = PatternSet(patterns)
    by_name: dict[str, list[Pattern]] = {}
    wildcard: list[Pattern] = []
    for p in pset:
        if p.op_names is None:
            wildcard.append(p)
        else:
            for n in p.op_names:
                by_name.setdefault(n, []).append(p)
    driver = _Driver(by_name, wildcard, ctx, recurse, erase_dead, max_rewrites, trace)
    new_graph = driver.run(graph, 0)
    return RewriteResult(new_graph, new_graph is not graph, driver.rewrites, driver.erased,
                         driver.fired, driver.trace)


class _Driver:
    def __init__(self, by_name, wildcard, ctx, recurse, erase_dead, max_rewrites, trace):
        self.by_name = by_name
        self.wildcard = wildcard
        self.candidates_cache: dict[str, list[Pattern]] = {}
        self.ctx = ctx
        self.recurse = recurse
        self.erase_dead = erase_dead
        self.max_rewrites = max_rewrites
        self.trace: list[Fired] | None = [] if trace else None
        self.fired: dict[str, int] = {}
        self.rewrites = 0
        self.erased = 0
        self.limit = 0

    def candidates(self, name: str) -> list[Pattern]:
        found = self.candidates_cache.get(name)
        if found is None:
            found = sorted(self.by_name.get(name, []) + self.wildcard, key=lambda p: -p.benefit)
            self.candidates_cache[name] = found
        return found

    # -- one graph --------------------------------------------------------------------------
    def run(self, graph: Graph, depth: int) -> Graph:
        changed = False
        ops = list(graph.ops)
        if self.recurse:
            for i, op in enumerate(ops):
                if op.regions:
                    regions = tuple(self.run(r, depth + 1) for r in op.regions)
                    if any(a is not b for a, b in zip(regions, op.regions)):
                        ops[i] = op.replace(regions=regions)
                        changed = True
        self.limit += self.max_rewrites if self.max_rewrites is not None else 10 * len(ops) + 1000
        state = _GraphState(self, graph, ops, depth)
        if state.process():
            changed = True
        if not changed:
            return graph
        return graph.replace(ops=state.flat_ops(), outputs=tuple(state.rw._outputs))


class _GraphState:
    """The mutable working copy of one graph: a linked list of nodes plus def-use bookkeeping."""

    def __init__(self, driver: _Driver, graph: Graph, ops: list[Op], depth: int):
        self.driver = driver
        self.depth = depth
        self.rw = Rewriter(driver.ctx)
        self.head = _Node(None)
        self.head.prev = self.head.next = self.head
        self.worklist: deque[_Node] = deque()
        self.rw._outputs = list(graph.outputs)
        self.output_positions: dict[Value, list[int]] = {}
        uses = self.rw._uses
        for i, v in enumerate(graph.outputs):
            uses[v] = uses.get(v, 0) + 1
            self.output_positions.setdefault(v, []).append(i)
        for op in ops:
            self.add(op, self.head)

    # -- bookkeeping ------------------------------------------------------------------------
    def add(self, op: Op, before: _Node) -> _Node:
        node = _Node(op)
        prev = before.prev
        node.prev, node.next = prev, before
        prev.next = node
        before.prev = node
        rw = self.rw
        for v in op.results:
            rw._producer[v] = node
        uses, users = rw._uses, rw._users
        for v in op.operands:
            uses[v] = uses.get(v, 0) + 1
            lst = users.get(v)
            if lst is None:
                users[v] = [node]
            else:
                lst.append(node)
        self.push(node)
        return node

    def push(self, node: _Node) -> None:
        if node.alive and not node.queued:
            node.queued = True
            self.worklist.append(node)

    def erase(self, node: _Node) -> None:
        node.alive = False
        node.prev.next = node.next
        node.next.prev = node.prev
        uses = self.rw._uses
        producer = self.rw._producer
        for v in node.op.operands:
            uses[v] -= 1
            if uses[v] == 0 and self.driver.erase_dead:
                p = producer.get(v)
                if p is not None:
                    self.push(p)
        self.driver.erased += 1

    def is_dead(self, op: Op) -> bool:
        uses = self.rw._uses
        return all(uses.get(v, 0) == 0 for v in op.results)

    def replace_uses(self, old: Value, new: Value) -> None:
        rw = self.rw
        count = rw._uses.pop(old, 0)
        if not count:
            return
        rw._uses[new] = rw._uses.get(new, 0) + count
        new_users = rw._users.setdefault(new, [])
        for node in rw._users.pop(old, ()):
            if not node.alive or old not in node.op.operands:
                continue
            node.op = node.op.replace(operands=tuple(new if v is old else v for v in node.op.operands))
            new_users.append(node)
            self.push(node)
        positions = self.output_positions.pop(old, None)
        if positions:
            for i in positions:
                rw._outputs[i] = new
            self.output_positions.setdefault(new, []).extend(positions)
        producer = rw._producer.get(new)
        if producer is not None:
            self.push(producer)

    # -- the loop ---------------------------------------------------------------------------
    def process(self) -> bool:
        changed = False
        driver = self.driver
        worklist = self.worklist
        while worklist:
            node = worklist.popleft()
            node.queued = False
            if not node.alive:
                continue
            op = node.op
            if driver.erase_dead and self.is_dead(op) and is_pure(op):
                self.erase(node)
                changed = True
                continue
            for p in driver.candidates(op.name):
                result = p(op, self.rw)
                if result is None:
                    continue
                if self.apply(node, op, p, result):
                    changed = True
                    break
        return changed

    def apply(self, node: _Node, op: Op, p: Pattern, result) -> bool:
        if isinstance(result, Value):
            result = Replace((result,))
        elif not isinstance(result, Replace):
            result = Replace(tuple(result))
        values = result.values
        if len(values) != len(op.results):
            raise RewriteError(f"pattern '{p.name}' gave {len(values)} replacement values for op "
                               f"'{op.name}', which has {len(op.results)} results; return one value "
                               f"per result")
        uses = self.rw._uses
        if not result.new_ops and all(a is b or not uses.get(a, 0) for a, b in zip(op.results, values)):
            return False  # nothing would change: the pattern did not really match
        for old, new in zip(op.results, values):
            if old.type.shape != new.type.shape or old.type.dtype != new.type.dtype:
                raise RewriteError(f"pattern '{p.name}' replaced a result of op '{op.name}' typed "
                                   f"{type_text(old.type)} with a value typed {type_text(new.type)}; "
                                   f"a replacement must keep shape and dtype")
        driver = self.driver
        driver.rewrites += 1
        driver.fired[p.name] = driver.fired.get(p.name, 0) + 1
        if driver.trace is not None:
            driver.trace.append(Fired(p.name, op.name, self.depth))
        if driver.rewrites > driver.limit:
            recent = ", ".join(str(f) for f in (driver.trace or [])[-5:]) or \
                ", ".join(f"{k} x{v}" for k, v in sorted(driver.fired.items(), key=lambda kv: -kv[1])[:5])
            raise RewriteError(f"patterns did not converge after {driver.rewrites - 1} rewrites "
                               f"(recent: {recent}); two patterns probably undo each other. Raise "
                               f"max_rewrites if the graph is just large, or run with trace=True")
        for new_op in result.new_ops:
            self.add(new_op, node)
        for old, new in zip(op.results, values):
            if old is not new:
                self.replace_uses(old, new)
        if self.is_dead(op) and is_pure(op):
            self.erase(node)
        return True

    def flat_ops(self) -> tuple[Op, ...]:
        out = []
        node = self.head.next
        while node is not self.head:
            out.append(node.op)
            node = node.next
        return tuple(out)
