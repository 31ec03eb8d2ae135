"""The one adapter between shardkit and JAX's internals.

Everything that touches `jax._src` or `jax.extend.core` lives here, so that a JAX upgrade is
a change to this file alone. The rest of shardkit uses only the functions below and public JAX.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import extend as _jex  # noqa: F401  (makes jax.extend.core importable)
from jax.extend import core as jcore
from jax._src import core as _core
from jax._src import mesh as _mesh_internal
from jax._src import named_sharding as _named_sharding
from jax._src.random import prng as _prng

ClosedJaxpr = jcore.ClosedJaxpr
Jaxpr = jcore.Jaxpr
Primitive = jcore.Primitive
ShapedArray = _core.ShapedArray
UNSPECIFIED = _named_sharding.UNSPECIFIED
UnspecifiedValue = type(UNSPECIFIED)
PRNGImpl = _prng.PRNGImpl
AbstractDevice = _mesh_internal.AbstractDevice  # device kind/platform an AbstractMesh may carry
MemorySpace = _core.MemorySpace  # an Enum in the params of e.g. `empty`


def param_data_classes() -> list[type]:
    """Frozen dataclasses and NamedTuples that appear in primitive params and are plain data:
    checkpoint policies (DotsSaveable, SaveOnlyTheseNames, ...) and custom_linear_solve's tuples."""
    import dataclasses
    import inspect

    from jax._src import ad_checkpoint
    from jax._src.lax.control_flow import solves
    classes = [v for v in vars(ad_checkpoint).values()
               if inspect.isclass(v) and dataclasses.is_dataclass(v) and v.__module__ == ad_checkpoint.__name__]
    classes.append(solves._LinearSolveTuple)
    return classes

# -- dtypes -----------------------------------------------------------------------------------


def is_key_dtype(dtype) -> bool:
    return isinstance(dtype, _prng.KeyTy)


def key_dtype(tag: str):
    """The extended dtype `key<tag>` of a registered PRNG implementation."""
    for impl in _prng.prngs.values():
        if impl.tag == tag or impl.name == tag:
            return _prng.KeyTy(impl)
    raise KeyError(f"key<{tag}>")


def numpy_dtype(name: str):
    return jnp.dtype(name)


def itemsize(dtype) -> int:
    if is_key_dtype(dtype):
        impl = dtype._impl
        size = 1
        for d in impl.key_shape:
            size *= d
        return 4 * size
    return np.dtype(dtype).itemsize


def prng_impl(name: str):
    try:
        return _prng.prngs[name]
    except KeyError:
        raise KeyError(f"no PRNG implementation named {name!r}; known: {sorted(_prng.prngs)}")


# -- primitives -------------------------------------------------------------------------------

_PRIMITIVES: dict[str, Primitive] = {}
_SCANNED = False
_SCAN_PACKAGES = ("jax._src.lax", "jax._src.random", "jax._src.state", "jax._src.ad_util",
                  "jax._src.custom_derivatives", "jax._src.ad_checkpoint", "jax._src.pjit",
                  "jax._src.shard_map", "jax._src.callback", "jax._src.debugging", "jax._src.core",
                  "jax._src.dispatch", "jax._src.interpreters.ad", "jax._src.interpreters.pxla",
                  "jax._src.custom_batching", "jax._src.custom_transpose", "jax._src.checkify",
                  "jax._src.ffi", "jax._src.shard_alike", "jax._src.sharding_impls",
                  "jax._src.numpy", "jax._src.nn", "jax._src.scipy", "jax._src.image",
                  "jax._src.ops", "jax._src.earray", "jax._src.custom_partitioning")


def _scan_primitives() -> None:
    global _SCANNED
    if _SCANNED:
        return
    _SCANNED = True
    for package in _SCAN_PACKAGES:
        try:
            module = importlib.import_module(package)
        except Exception:
            continue
        modules = [module]
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), package + "."):
            try:
                modules.append(importlib.import_module(info.name))
            except Exception:
                continue
        for mod in modules:
            for value in list(vars(mod).values()):
                if isinstance(value, Primitive):
                    _PRIMITIVES.setdefault(value.name, value)


def remember_primitive(prim: Primitive) -> None:
    """Make a primitive met during capture resolvable by name (for parsing printed IR)."""
    _PRIMITIVES.setdefault(prim.name, prim)


def primitive(name: str) -> Primitive | None:
    """The JAX primitive with this name, or None when the process knows none."""
    if name not in _PRIMITIVES:
        _scan_primitives()
    return _PRIMITIVES.get(name)


def is_primitive(obj) -> bool:
    return isinstance(obj, Primitive)


def abstract_eval(prim: Primitive, types: Sequence[tuple[tuple[int, ...], Any]], params: dict):
    """Result (shape, dtype) pairs of binding `prim` on arguments of the given shapes and dtypes."""
    avals = [ShapedArray(tuple(shape), dtype) for shape, dtype in types]
    out = prim.abstract_eval(*avals, **params)
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (set, frozenset)):
        out = out[0]
    if not prim.multiple_results:
        out = [out]
    return [(tuple(a.shape), a.dtype) for a in out]


def bind(prim: Primitive, args: Sequence[Any], params: dict) -> list:
    """Bind a primitive the way JAX's own jaxpr evaluator does; always returns a list."""
    bind_params = prim.get_bind_params(dict(params))
    if isinstance(bind_params, tuple):  # older JAX: (subfuns, params)
        subfuns, bind_params = bind_params
        out = prim.bind(*subfuns, *args, **bind_params)
    else:
        out = prim.bind(*args, **bind_params)
    return list(out) if prim.multiple_results else [out]


# -- jaxprs -----------------------------------------------------------------------------------


def trace(fn: Callable, args: tuple, kwargs: dict):
    """Trace `fn` to a closed jaxpr; returns (closed_jaxpr, output shape pytree).

    Mutable arrays the function makes for itself (`jax.new_ref`) are discharged into pure array
    code, and primitives over non-array values (shardkit.functional) are applied away, since the IR
    holds arrays only.
    """
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args, **kwargs)
    return discharge_refs(lower_high_jaxpr(closed)), out_shape


def discharge_refs(jaxpr):
    """A closed or open jaxpr with the mutable arrays (`jax.new_ref`) it makes itself turned into pure
    array code; returned unchanged when it makes none."""
    from jax._src.state import types as state_types
    inner = jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr
    if not any(isinstance(v.aval, state_types.AbstractRef) for eqn in inner.eqns for v in eqn.outvars):
        return jaxpr
    from jax._src.state import discharge
    if isinstance(jaxpr, ClosedJaxpr):
        return discharge.discharge_state(jaxpr)
    closed = discharge.discharge_state(ClosedJaxpr(jaxpr, []))
    return _inline_consts(closed) if closed.consts else closed.jaxpr


def is_closed_jaxpr(obj) -> bool:
    return isinstance(obj, ClosedJaxpr)


def is_open_jaxpr(obj) -> bool:
    return isinstance(obj, Jaxpr)


def is_literal(atom) -> bool:
    return isinstance(atom, jcore.Literal)


def is_drop_var(atom) -> bool:
    return type(atom).__name__ == "DropVar"


def literal_value(atom):
    return atom.val


def aval_of(atom):
    """(shape, dtype) of a jaxpr variable or literal; raises TypeError for non-array avals."""
    aval = atom.aval
    if not isinstance(aval, ShapedArray):  # tokens, refs (which also have .shape and .dtype), ...
        raise TypeError(f"unsupported abstract value {aval!r}")
    return tuple(aval.shape), aval.dtype


def aval_shape_dtype(aval):
    return tuple(aval.shape), aval.dtype


def eqn_parts(eqn):
    """(primitive, invars, outvars, params) of a jaxpr equation."""
    return eqn.primitive, eqn.invars, eqn.outvars, dict(eqn.params)


def eqn_location(eqn, skip_dirs: Sequence[str] = ()) -> str:
    """'file.py:LINE (function)' of the user code that made `eqn`, skipping JAX's frames and any
    file under `skip_dirs`; '' when unknown."""
    from jax._src import source_info_util
    source_info = getattr(eqn, "source_info", None)
    if source_info is None:
        return ""
    for frame in source_info_util.user_frames(source_info.traceback):
        if not any(frame.file_name.startswith(d) for d in skip_dirs):
            return f"{frame.file_name}:{frame.start_line} ({frame.function_name})"
    return ""


def closed_parts(closed):
    """(jaxpr, consts) of a closed jaxpr."""
    return closed.jaxpr, closed.consts


def open_parts(jaxpr):
    """(constvars, invars, outvars, eqns) of an open jaxpr."""
    return jaxpr.constvars, jaxpr.invars, jaxpr.outvars, jaxpr.eqns


def make_closed_jaxpr(fn: Callable, types: Sequence[tuple[tuple[int, ...], Any]]):
    """Trace `fn` (flat arrays in, flat list out) over abstract arguments into a ClosedJaxpr."""
    structs = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in types]
    return jax.make_jaxpr(lambda *xs: list(fn(*xs)))(*structs)


def make_open_jaxpr(fn: Callable, types: Sequence[tuple[tuple[int, ...], Any]]):
    """Like make_closed_jaxpr but an open Jaxpr: constants are folded in as literals."""
    closed = make_closed_jaxpr(fn, types)
    if not closed.consts:
        return closed.jaxpr
    return _inline_consts(closed)


def _inline_consts(closed):
    jaxpr = closed.jaxpr
    literals = [jcore.Literal(np.asarray(c), v.aval) for v, c in zip(jaxpr.constvars, closed.consts)]
    mapping = dict(zip(jaxpr.constvars, literals))
    eqns = [eqn.replace(invars=[mapping.get(v, v) if not is_literal(v) else v for v in eqn.invars])
            for eqn in jaxpr.eqns]
    outvars = [mapping.get(v, v) if not is_literal(v) else v for v in jaxpr.outvars]
    return jaxpr.replace(constvars=[], eqns=eqns, outvars=outvars)


# -- objects that appear in params ------------------------------------------------------------


def make_shaped_array(shape, dtype):
    return ShapedArray(tuple(shape), dtype)


def make_mesh_from_ids(axis_names, axis_sizes, axis_types, device_ids):
    """Rebuild a concrete Mesh from device ids of this process."""
    from jax.sharding import AxisType, Mesh
    if not axis_names:
        return _empty_mesh()
    by_id = {d.id: d for d in jax.devices()}
    try:
        devices = np.array([by_id[i] for i in device_ids], dtype=object).reshape(axis_sizes)
    except KeyError as e:
        raise KeyError(f"device id {e} is not known in this process")
    types = tuple(getattr(AxisType, t) for t in axis_types)
    return Mesh(devices, tuple(axis_names), axis_types=types)


def _empty_mesh():
    from jax._src import mesh as _mesh
    return _mesh.empty_concrete_mesh


def mesh_device_ids(mesh) -> tuple[int, ...]:
    if not mesh.axis_names:
        return ()
    return tuple(int(d.id) for d in np.asarray(mesh.devices).flat)


def is_concrete_mesh(obj) -> bool:
    from jax.sharding import Mesh
    return isinstance(obj, Mesh)


def is_abstract_mesh(obj) -> bool:
    from jax.sharding import AbstractMesh
    return isinstance(obj, AbstractMesh)


def tree_is_builtin(treedef) -> bool:
    """Whether a PyTreeDef uses only tuple/list/dict/None nodes (so it can be written as text)."""
    builtin = (tuple, list, dict, type(None))
    stack = [treedef]
    while stack:
        node = stack.pop()
        if node.num_nodes == 1 and node.num_leaves == 1:
            continue
        data = node.node_data()
        if data is None:
            continue
        kind = data[0]
        if kind not in builtin:
            return False
        stack.extend(node.children())
    return True


# -- the sharding-hint primitive ------------------------------------------------------------------


def make_hint_primitive(name: str = "shardkit_hint") -> Primitive:
    """An identity primitive carrying a PartitionSpec and a priority, transparent to every transform.

    JVP and transpose apply the same hint to tangents and cotangents; vmap inserts an unsharded
    batch dimension into the spec; lowering to XLA is the identity (shardkit applies the sharding).
    """
    from jax._src.interpreters import ad, batching, mlir
    from jax.sharding import PartitionSpec

    prim = Primitive(name)
    prim.def_impl(lambda x, **_: x)
    prim.def_abstract_eval(lambda aval, **_: aval)
    mlir.register_lowering(prim, lambda ctx, x, **_: [x])
    ad.deflinear2(prim, lambda ct, x, **params: [prim.bind(ct, **params)] if not isinstance(ct, ad.Zero) else [ct])

    def batch(args, dims, *, spec, priority):
        (x,), (d,) = args, dims
        if d is None or d is getattr(batching, "not_mapped", None):
            return prim.bind(x, spec=spec, priority=priority), d
        entries = list(spec) + [None] * (x.ndim - 1 - len(tuple(spec)))
        entries.insert(d, None)
        return prim.bind(x, spec=PartitionSpec(*entries), priority=priority), d

    batching.primitive_batchers[prim] = batch
    remember_primitive(prim)
    return prim


# -- defining new primitives (for shardkit's own federated and functional primitives) ------------


def define_primitive(name: str, *, impl: Callable, abstract_eval: Callable, multiple_results: bool = False,
                     jvp: Callable | None = None, transpose: Callable | None = None,
                     batch: Callable | None = None, lowering: Callable | None = None) -> Primitive:
    """Make a JAX primitive from plain functions, without touching JAX internals elsewhere.

    impl(*args, **params): eager evaluation (also the default lowering, via jax's lower_fun).
    abstract_eval(*avals, **params): result aval(s) (use `jax.core.ShapedArray` / `make_shaped_array`).
    jvp(primals, tangents, **params) -> (primal_out, tangent_out); tangents may be `Zero` (see is_zero).
    transpose(cotangents, *args, **params) -> cotangents of the linear args, with `undefined` args
        reported by is_undefined(arg); return None for an argument with no cotangent.
    batch(args, dims, **params) -> (out, out_dims); dims entries are None for unbatched args.
    lowering(*args, **params): a JAX-traceable function used to lower to XLA (default: impl).
    """
    from jax._src.interpreters import ad, batching, mlir

    prim = Primitive(name)
    prim.multiple_results = multiple_results
    prim.def_impl(impl)
    prim.def_abstract_eval(abstract_eval)
    mlir.register_lowering(prim, mlir.lower_fun(lowering or impl, multiple_results=multiple_results))
    if jvp is not None:
        ad.primitive_jvps[prim] = jvp
    if transpose is not None:
        ad.primitive_transposes[prim] = transpose
    if batch is not None:
        batching.primitive_batchers[prim] = batch
    remember_primitive(prim)
    return prim


def is_undefined(x) -> bool:
    """Whether a transpose-rule argument is the linear input being transposed."""
    from jax._src.interpreters import ad
    return isinstance(x, ad.UndefinedPrimal)


def undefined_aval(x):
    """The abstract value of an undefined (linear) transpose argument."""
    return x.aval


def is_zero(x) -> bool:
    """Whether a tangent or cotangent is a symbolic zero."""
    from jax._src.interpreters import ad
    return isinstance(x, ad.Zero)


def instantiate_zero(x):
    """A symbolic zero as a concrete zeros array (other values pass through)."""
    from jax._src.interpreters import ad
    return ad.instantiate_zeros(x) if isinstance(x, ad.Zero) else x


def zero_like_aval(aval):
    """A symbolic zero tangent/cotangent for the given aval."""
    from jax._src.interpreters import ad
    return ad.Zero(aval.to_tangent_aval() if hasattr(aval, "to_tangent_aval") else aval)


# -- jaxpr helpers for primitives that hold a computation (shardkit's federated map) ---------------


def trace_hoisted(fn: Callable, types: Sequence[tuple[tuple[int, ...], Any]]):
    """Trace `fn` (flat arrays in, flat list out) to a closed jaxpr with no constants.

    Everything `fn` closes over (arrays, and tracers of enclosing transformations such as jit, grad
    or vmap) becomes a leading input. Returns (closed_jaxpr, hoisted_values).
    """
    from jax._src.interpreters import partial_eval as pe
    closed = make_closed_jaxpr(fn, types)
    if not closed.consts:
        return closed, []
    return ClosedJaxpr(pe.convert_constvars_jaxpr(closed.jaxpr), []), list(closed.consts)


def eval_jaxpr(closed, args: Sequence[Any]) -> list:
    """Evaluate a closed jaxpr on `args` under the current transformations; always a list."""
    return list(jcore.jaxpr_as_fun(closed)(*args))


def jaxpr_in_avals(closed) -> list:
    """The abstract values of a closed jaxpr's inputs."""
    return list(closed.in_avals)


def jaxpr_out_avals(closed) -> list:
    """The abstract values of a closed jaxpr's outputs."""
    return list(closed.out_avals)


def linearize_jaxpr(closed, nonzeros: Sequence[bool]):
    """Split the JVP of a closed jaxpr into a primal and a tangent jaxpr (as `jax.linearize` does).

    Returns (primal_jaxpr, num_new_residuals, nonzero_outputs, forwarded, tangent_jaxpr):
    primal_jaxpr maps the inputs to the outputs followed by the new residuals; tangent_jaxpr maps
    all residuals followed by the nonzero input tangents to the nonzero output tangents. Residual i
    is input `forwarded[i]` of `closed` when that is not None, else the next new residual.
    """
    from jax._src.interpreters import ad
    num_consts = len(closed.consts)
    allow = [False] * num_consts + [True] * len(closed.jaxpr.invars)
    primal, num_res, nzs_out, fwds, tangent = ad.linearize_jaxpr(closed, tuple(nonzeros), False, allow,
                                                                 is_vjp=False)
    fwds = [None if f is None else f - num_consts for f in fwds]
    return primal, num_res, list(nzs_out), fwds, tangent


def tangent_aval(aval):
    """The abstract value of tangents and cotangents of `aval` (float0 for integers)."""
    return aval.to_tangent_aval()


def abstract_mesh():
    """The abstract mesh of the enclosing `jax.set_mesh` / `jax.sharding.use_mesh`, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def apply_primitive(prim: Primitive, *args, **params):
    """Evaluate a primitive eagerly by compiling its lowering (what JAX does for lax primitives)."""
    from jax._src import dispatch
    return dispatch.apply_primitive(prim, *args, **params)


# -- non-array JAX values (shardkit's functional `Function`), via JAX's hijax types ----------------


def high_type_base() -> type:
    """The base class of types of non-array JAX values (`jax._src.hijax.HiType`): a subclass says how
    a value lowers to arrays (`lo_ty`, `lower_val`, `raise_val`) and how tangents add and vanish."""
    from jax._src import hijax
    return hijax.HiType


def register_high_type(value_class: type, type_of: Callable) -> None:
    """Make instances of `value_class` JAX values whose type is `type_of(value)`."""
    from jax._src import hijax
    hijax.register_hitype(value_class, type_of)


def define_high_primitive(name: str, *, apply: Callable, abstract_eval: Callable,
                          multiple_results: bool = False, jvp: Callable | None = None,
                          transpose: Callable | None = None, batch: Callable | None = None) -> Primitive:
    """A primitive over non-array values: `apply(*args, **params)` runs it on values (eagerly, and
    when a jaxpr that holds it is lowered to arrays, with array tracers inside the values);
    abstract_eval/jvp/transpose/batch as in `define_primitive`."""
    from jax._src.interpreters import ad, batching

    prim = Primitive(name)
    prim.multiple_results = multiple_results
    prim.is_high = lambda *avals, **params: True
    prim.to_lojax = apply
    prim.def_impl(apply)
    prim.def_abstract_eval(abstract_eval)
    if jvp is not None:
        ad.primitive_jvps[prim] = jvp
    if transpose is not None:
        ad.primitive_transposes[prim] = transpose
    if batch is not None:
        batching.primitive_batchers[prim] = batch
    remember_primitive(prim)
    return prim


def lower_high_jaxpr(closed):
    """A closed jaxpr over arrays only: primitives over non-array values are applied away (a jaxpr
    without them is returned unchanged)."""
    if not closed.jaxpr.is_high:
        return closed
    if any(a.is_high for a in list(closed.in_avals) + list(closed.out_avals)):
        from .errors import CaptureError
        kinds = sorted({type(a).__name__ for a in list(closed.in_avals) + list(closed.out_avals)
                        if a.is_high})
        raise CaptureError(f"the captured function takes or returns non-array values ({', '.join(kinds)}, "
                           f"e.g. a shardkit.functional Function); the IR holds arrays only: pass the "
                           f"arrays such a value is built from, build it inside, and return arrays")
    from jax._src.interpreters import partial_eval as pe
    return pe.lower_jaxpr2(closed)
