"""`FunctionType`: the JAX type of a Function, so JAX transformations treat functions as values.

A type knows the function's spec and, when it describes a concrete function, its structure (the
static program): that is what lets a Function cross a `jax.jit` boundary (its leaves become the
arrays XLA sees) and be rebuilt on the other side. Tangent and cotangent types carry the spec only:
the derivative of a functional with respect to a function is a function of a different structure,
and JAX only needs to know that it is a function of the same spec.
"""
from __future__ import annotations

from typing import Any

from shardkit.ir import _jax

from .errors import FunctionalError
from .function import Function, Program, program_avals, rebuild, leaves_of, structure
from .spec import Spec


class FunctionType(_jax.high_type_base()):
    """The type of a Function: its spec, and its structure when known."""

    def __init__(self, spec: Spec, source: Function | None = None, program: Program | None = None):
        self.spec = spec
        self._source = source if source is not None and not source.unknown else None
        self._program = program
        self._abstract = None

    # -- structure --------------------------------------------------------------------------------
    @property
    def has_structure(self) -> bool:
        return self._source is not None or self._program is not None

    @property
    def program(self) -> Program:
        if self._program is None:
            if self._source is None:
                raise FunctionalError(f"a function of spec {self.spec} whose structure is not known "
                                      f"here (a tangent or cotangent type) cannot be lowered to arrays")
            self._program = structure(self._source)[0]
        return self._program

    def abstract_function(self) -> Function:
        """A Function with this type's structure (its leaves may be abstract), for building results."""
        if self._source is not None:
            return self._source
        if self._program is not None:
            if self._abstract is None:
                self._abstract = rebuild(self._program, program_avals(self._program))
            return self._abstract
        return Function("unknown", (), (), (), self.spec)

    # -- type equality ------------------------------------------------------------------------------
    def __eq__(self, other):
        # Structured types are equal when they describe the same Function object: comparing
        # structures would walk whole graphs, and JAX compares types often (abstract-evaluation
        # caches). Types rebuilt from a program compare by program.
        if self is other:
            return True
        if not isinstance(other, FunctionType) or other.spec != self.spec:
            return False
        if self._source is not None or other._source is not None:
            return self._source is other._source
        if self._program is not None or other._program is not None:
            return self._program == other._program
        return True

    def __hash__(self):
        return hash((FunctionType, self.spec))

    def normalize(self):
        return FunctionType(self.spec)

    def str_short(self, short_dtypes=False, mesh_axis_types=False, **_) -> str:
        return f"Fn{self.spec}"

    def __repr__(self):
        return f"FunctionType{self.spec}"

    # -- lowering to arrays ---------------------------------------------------------------------------
    def lo_ty(self) -> list:
        return program_avals(self.program)

    def lower_val(self, value: Function) -> list:
        return leaves_of(value)

    def raise_val(self, *leaves) -> Function:
        return rebuild(self.program, list(leaves))

    # -- autodiff ---------------------------------------------------------------------------------------
    def to_tangent_aval(self):
        return FunctionType(self.spec)

    def to_ct_aval(self):
        return FunctionType(self.spec)

    def vspace_zero(self) -> Function:
        from .builders import zeros
        return zeros(self.spec)

    def vspace_add(self, x, y):
        from .primitives import add_p
        return add_p.bind(x, y, ct=True)

    # -- vmap ---------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """(batch size,) for the type of a batch of functions (see batching.py)."""
        if self._source is None or self._source.batch is None:
            raise AttributeError("a function type has no shape")
        return (self._source.batch[0],)

    def dec_rank(self, size, spec):
        """The type of one member of a batch of functions (vmap maps a batched Function on axis 0)."""
        source = self._source
        if spec != 0 or source is None or source.batch is None:
            raise FunctionalError(
                f"vmap: a function {self.spec} is not a batch of functions here; map it with "
                f"in_axes=None (a batch of functions is what jax.vmap returns when it builds functions "
                f"from batched arrays, and is mapped with in_axes=0)")
        from .batching import unbatched_program
        return FunctionType(self.spec, program=unbatched_program(self.program, source.batch[1]))

    def inc_rank(self, size, spec):
        raise FunctionalError(
            f"vmap: a batch of functions {self.spec} cannot cross this transformation boundary (a "
            f"jax.jit, scan or custom rule inside the vmap); apply jax.vmap inside it, or return arrays")

    # -- properties readable on traced functions ----------------------------------------------------------
    @property
    def arg_shapes(self):
        return self.spec.args

    @property
    def ret_shape(self):
        return self.spec.ret

    @property
    def num_args(self):
        return self.spec.num_args

    @property
    def dtype(self):
        """The result's dtype (what JAX's checks on differentiable inputs read)."""
        return self.spec.ret_dtype

    weak_type = False


def type_of(f: Function) -> FunctionType:
    if f._type is None:
        f._type = FunctionType(f.spec, source=f)
    return f._type


_jax.register_high_type(Function, type_of)


def abstract(x) -> Any:
    """The stand-in a builder sees for an abstract operand: a Function for a FunctionType."""
    return x.abstract_function() if isinstance(x, FunctionType) else x
