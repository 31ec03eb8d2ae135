"""Factor-based sharding rules, the data form of an op's sharding behaviour (as in Shardy).

Each tensor dimension of an op maps to one or more *factors* (several for a dimension that a reshape
merges: a compound dimension, major factor first). A factor sharded over some mesh axes shards every
dimension it appears in. A factor that appears in operands but in no result is a *reduction* factor
(a contracted dimension: sharding it leaves partial sums). A *replication* factor must not be sharded
(e.g. the dimension a sort or cumsum runs along); a *halo* factor may be sharded but neighbours then
exchange borders (convolution windows).

    rule = FactorRule.parse("i k, k j -> i j", {"i": 8, "k": 4, "j": 16})
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FactorRule:
    """Per operand and per result: a tuple (one per dim) of factor-name tuples."""

    operands: tuple[tuple[tuple[str, ...], ...], ...]
    results: tuple[tuple[tuple[str, ...], ...], ...]
    sizes: tuple[tuple[str, int], ...]
    replication: frozenset[str] = frozenset()
    halo: frozenset[str] = frozenset()

    @property
    def size_of(self) -> dict[str, int]:
        return dict(self.sizes)

    @property
    def factors(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.sizes)

    @property
    def reduction(self) -> frozenset[str]:
        in_results = {f for tensor in self.results for dim in tensor for f in dim}
        in_operands = {f for tensor in self.operands for dim in tensor for f in dim}
        return frozenset(in_operands - in_results)

    @staticmethod
    def parse(text: str, sizes: dict[str, int], replication=(), halo=()) -> "FactorRule":
        """`"i k, k j -> i j"`; `(a b)` is a compound dim; `_` an unmapped dim; `""` a scalar."""
        lhs, _, rhs = text.partition("->")
        operands = tuple(_parse_tensor(t) for t in _split(lhs))
        results = tuple(_parse_tensor(t) for t in _split(rhs))
        return FactorRule(operands, results, tuple(sizes.items()), frozenset(replication), frozenset(halo))

    def __str__(self) -> str:
        def tensor(t):
            return " ".join(d[0] if len(d) == 1 else "(" + " ".join(d) + ")" if d else "_" for d in t)
        text = ", ".join(tensor(t) for t in self.operands) + " -> " + ", ".join(tensor(t) for t in self.results)
        extras = []
        if self.reduction:
            extras.append("reduction={" + ",".join(sorted(self.reduction)) + "}")
        if self.replication:
            extras.append("replication={" + ",".join(sorted(self.replication)) + "}")
        if self.halo:
            extras.append("halo={" + ",".join(sorted(self.halo)) + "}")
        return text + (" " + " ".join(extras) if extras else "")


def _split(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def _parse_tensor(text: str) -> tuple[tuple[str, ...], ...]:
    dims, i, tokens = [], 0, text.replace("(", " ( ").replace(")", " ) ").split()
    while i < len(tokens):
        tok = tokens[i]
        if tok == "(":
            j = tokens.index(")", i)
            dims.append(tuple(tokens[i + 1:j]))
            i = j + 1
        else:
            dims.append(() if tok == "_" else (tok,))
            i += 1
    return tuple(dims)


@dataclass(frozen=True, eq=False)
class Tie:
    """Two values whose dimensions are the same factors (an op operand and its region argument, ...).

    With `stacked`, `outer` has one more leading dimension than `inner` (scan's stacked inputs and
    outputs); that dimension is not tied to anything.
    """

    outer: object
    inner: object
    stacked: bool = False


@dataclass(frozen=True, eq=False)
class Pin:
    """A value whose sharding an op fixes (e.g. shard_map's in_specs/out_specs)."""

    value: object
    sharding: object


class RuleBuilder:
    """Builds a FactorRule dimension by dimension (used by rules written as code)."""

    def __init__(self, num_operands: int, operand_ranks, result_ranks):
        self.operands = [[() for _ in range(r)] for r in operand_ranks]
        self.results = [[() for _ in range(r)] for r in result_ranks]
        self.sizes: dict[str, int] = {}
        self.replication: set[str] = set()
        self.halo: set[str] = set()

    def factor(self, size: int, *, replication: bool = False, halo: bool = False) -> str:
        name = f"f{len(self.sizes)}"
        self.sizes[name] = int(size)
        if replication:
            self.replication.add(name)
        if halo:
            self.halo.add(name)
        return name

    def operand(self, index: int, dim: int, *factors: str) -> None:
        self.operands[index][dim] = tuple(factors)

    def result(self, index: int, dim: int, *factors: str) -> None:
        self.results[index][dim] = tuple(factors)

    def build(self) -> FactorRule:
        return FactorRule(tuple(tuple(t) for t in self.operands), tuple(tuple(t) for t in self.results),
                          tuple(self.sizes.items()), frozenset(self.replication), frozenset(self.halo))
