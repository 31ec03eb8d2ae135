"""Op parameter values: normalising them to hashable form, writing them as text and reading them back.

Text forms (the parser in `parser.py` reads exactly these):
    None true false 3 -2 1.5 inf -inf nan "text"            basic values
    (a, b) (a,) ()   [a, b]   set{a, b}   dict{k: v}          containers
    f32 bf16 i32 key<fry>                                     dtypes
    #Name(arg, key=value)  #Enum.MEMBER                       registered classes (data only)
    #region(0)                                                a nested graph (op.regions[0])
    &12<TypeName>                                             an in-process object (see `Ref`)
Nothing here evaluates code: a tagged form only calls the constructor registered for its tag.
"""
from __future__ import annotations

import base64
import enum
import math
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Callable

import numpy as np
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from . import _jax
from .dtypes import dtype_name, parse_dtype


# -- wrapper types that make params hashable --------------------------------------------------


@dataclass(frozen=True)
class RegionRef:
    """A param that stood for a jaxpr: the index of the op region that replaced it."""

    index: int
    closed: bool = True


class ArrayValue:
    """A hashable, immutable numpy array used as a param (e.g. a constant's value)."""

    __slots__ = ("array", "_hash")

    def __init__(self, array):
        array = np.array(array, copy=True)
        array.setflags(write=False)
        self.array = array
        self._hash = None

    def __hash__(self):
        if self._hash is None:
            self._hash = hash((self.array.shape, str(self.array.dtype), self.array.tobytes()))
        return self._hash

    def __eq__(self, other):
        return (isinstance(other, ArrayValue) and self.array.shape == other.array.shape
                and self.array.dtype == other.array.dtype
                and self.array.tobytes() == other.array.tobytes())

    def __repr__(self):
        return f"ArrayValue({self.array!r})"


@dataclass(frozen=True)
class KeyArrayValue:
    """A constant array of PRNG keys: the implementation's name and the raw key data."""

    impl: str
    data: ArrayValue


class Opaque:
    """An unhashable Python object carried in params, hashed by identity."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, Opaque) and other.obj is self.obj


# -- references to in-process objects ---------------------------------------------------------

_REF_BY_ID: dict[int, tuple[int, Any]] = {}
_REF_OBJECTS: dict[int, Any] = {}


def ref_number(obj) -> int:
    """A stable number for an in-process object (the same object always gets the same number)."""
    key = id(obj)
    entry = _REF_BY_ID.get(key)
    if entry is None or entry[1] is not obj:
        number = len(_REF_OBJECTS) + 1
        _REF_OBJECTS[number] = obj
        _REF_BY_ID[key] = (number, obj)
        return number
    return entry[0]


def resolve_ref(number: int, type_name: str):
    """The object printed as `&number<type_name>`; KeyError if this process never printed it."""
    obj = _REF_OBJECTS[number]
    if type(obj).__name__ != type_name:
        raise KeyError(number)
    return obj


# -- normalisation ------------------------------------------------------------------------------


def normalize(value):
    """A hashable form of a JAX param value (lists become tuples, arrays ArrayValues, ...)."""
    if value is None or isinstance(value, (bool, str, RegionRef, ArrayValue, KeyArrayValue, Opaque)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, enum.Enum):
        return int(value)
    if isinstance(value, (float, np.floating)) and type(value) in (float, np.float64):
        return float(value)
    if isinstance(value, list):
        return tuple(normalize(v) for v in value)
    if isinstance(value, tuple) and type(value) is tuple:
        return tuple(normalize(v) for v in value)
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        return ArrayValue(value)
    names = _FIELD_CLASSES.get(type(value))
    if names is not None:  # e.g. GatherDimensionNumbers built by vmap holds numpy integers
        return type(value)(**{n: _plain(getattr(value, n)) for n in names})
    try:
        hash(value)
        return value
    except TypeError:
        return Opaque(value)


def _plain(value):
    """Numpy scalars inside a registered class's fields as Python scalars (they print as plain data)."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if type(value) in (tuple, list):
        return type(value)(_plain(v) for v in value)
    return value


def denormalize(value):
    """The object JAX expects back for a normalised param value."""
    if isinstance(value, ArrayValue):
        return value.array
    if isinstance(value, Opaque):
        return value.obj
    if type(value) is tuple:
        return tuple(denormalize(v) for v in value)
    return value


# -- registered classes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """How a class of param values is written (`encode` -> (args, kwargs)) and rebuilt (`decode`)."""

    tag: str
    matches: Callable[[Any], bool]
    encode: Callable[[Any], tuple[tuple, dict]]
    decode: Callable[..., Any]


_CODECS: list[Codec] = []
_CODEC_BY_TAG: dict[str, Codec] = {}
_ENUMS: dict[str, type] = {}
_FIELD_CLASSES: dict[type, tuple[str, ...]] = {}  # registered NamedTuples/dataclasses -> field names


def register_codec(codec: Codec) -> None:
    """Teach the printer and parser a class of param values."""
    _CODECS.append(codec)
    _CODEC_BY_TAG[codec.tag] = codec


def register_param_class(cls: type, tag: str | None = None) -> None:
    """Register a NamedTuple, frozen dataclass or Enum so it prints as data and parses back."""
    tag = tag or cls.__name__
    if issubclass(cls, enum.Enum):
        _ENUMS[tag] = cls
        return
    if hasattr(cls, "_fields"):
        names = cls._fields
    elif is_dataclass(cls):
        names = tuple(f.name for f in fields(cls))
    else:
        raise TypeError(f"{cls} is neither a NamedTuple, a dataclass nor an Enum")
    _FIELD_CLASSES[cls] = names
    register_codec(Codec(tag, lambda v, cls=cls: type(v) is cls,
                         lambda v, names=names: ((), {n: getattr(v, n) for n in names}),
                         lambda *a, cls=cls, **k: cls(*a, **k)))


def codec_for(value) -> Codec | None:
    for codec in _CODECS:
        if codec.matches(value):
            return codec
    return None


def enum_tag(value) -> str | None:
    for tag, cls in _ENUMS.items():
        if type(value) is cls:
            return tag
    return None


def decode_tagged(tag: str, args: tuple, kwargs: dict):
    """Rebuild a `#tag(...)` value; KeyError when no class is registered under that tag."""
    return _CODEC_BY_TAG[tag].decode(*args, **kwargs)


def decode_enum(tag: str, member: str):
    cls = _ENUMS[tag]
    return cls[member]


def _spec_encode(spec):
    entries = []
    for e in spec:
        entries.append(_UNCONSTRAINED if e is PartitionSpec.UNCONSTRAINED else e)
    kwargs = {}
    if getattr(spec, "unreduced", None):
        kwargs["unreduced"] = frozenset(spec.unreduced)
    if getattr(spec, "reduced", None):
        kwargs["reduced"] = frozenset(spec.reduced)
    return tuple(entries), kwargs


def _spec_decode(*entries, **kwargs):
    entries = tuple(PartitionSpec.UNCONSTRAINED if e is _UNCONSTRAINED else e for e in entries)
    return PartitionSpec(*entries, **kwargs)


class _UnconstrainedMarker:
    def __repr__(self):
        return "UNCONSTRAINED"


_UNCONSTRAINED = _UnconstrainedMarker()


def _register_builtin_codecs() -> None:
    for cls in (lax.GatherDimensionNumbers, lax.ScatterDimensionNumbers, lax.ConvDimensionNumbers):
        register_param_class(cls)
    for cls in (lax.GatherScatterMode, lax.Precision, lax.RandomAlgorithm, lax.RoundingMethod,
                lax.FftType, lax.DotAlgorithmPreset, lax.AccuracyMode, AxisType):
        register_param_class(cls)
    if hasattr(lax, "DotAlgorithm") and hasattr(lax.DotAlgorithm, "_fields"):
        register_param_class(lax.DotAlgorithm)
    if is_dataclass(lax.Tolerance):
        register_param_class(lax.Tolerance)
    elif isinstance(lax.Tolerance, type):  # a plain class with atol/rtol/ulps attributes
        register_codec(Codec("Tolerance", lambda v: type(v) is lax.Tolerance,
                             lambda v: ((), {"atol": v.atol, "rtol": v.rtol, "ulps": v.ulps}), lax.Tolerance))
    for name in sorted(dir(lax)):  # any other public lax param class (RaggedDotDimensionNumbers, ...)
        cls = getattr(lax, name)
        if (isinstance(cls, type) and not name.startswith("_") and cls.__name__ not in _CODEC_BY_TAG
                and cls.__name__ not in _ENUMS
                and (issubclass(cls, enum.Enum) or hasattr(cls, "_fields") or is_dataclass(cls))):
            register_param_class(cls)
    register_codec(Codec("UNCONSTRAINED", lambda v: v is _UNCONSTRAINED, lambda v: ((), {}),
                         lambda: _UNCONSTRAINED))
    register_codec(Codec("P", lambda v: type(v) is PartitionSpec, _spec_encode, _spec_decode))
    register_codec(Codec("NamedSharding", lambda v: type(v) is NamedSharding,
                         lambda v: ((), {"mesh": v.mesh, "spec": v.spec, "memory_kind": v.memory_kind}),
                         lambda mesh, spec, memory_kind=None: NamedSharding(mesh, spec, memory_kind=memory_kind)))
    register_codec(Codec("Mesh", _jax.is_concrete_mesh,
                         lambda m: ((), {"axis_names": tuple(m.axis_names),
                                         "axis_sizes": tuple(m.axis_sizes),
                                         "axis_types": tuple(t.name for t in m.axis_types),
                                         "devices": _jax.mesh_device_ids(m)}),
                         lambda axis_names, axis_sizes, axis_types, devices:
                         _jax.make_mesh_from_ids(axis_names, axis_sizes, axis_types, devices)))
    register_param_class(_jax.AbstractDevice)
    register_param_class(_jax.MemorySpace)
    for cls in _jax.param_data_classes():
        register_param_class(cls, tag=cls.__name__.lstrip("_"))
    register_codec(Codec("policy", _is_named_policy, lambda f: ((f.__name__,), {}), _named_policy))
    register_codec(Codec("AbstractMesh", _jax.is_abstract_mesh, _abstract_mesh_encode, _abstract_mesh_decode))
    register_codec(Codec("Unspecified", lambda v: isinstance(v, _jax.UnspecifiedValue),
                         lambda v: ((), {}), lambda: _jax.UNSPECIFIED))
    register_codec(Codec("PRNGImpl", lambda v: isinstance(v, _jax.PRNGImpl),
                         lambda v: ((v.name,), {}), _jax.prng_impl))
    register_codec(Codec("prim", _jax.is_primitive, lambda p: ((p.name,), {}), _primitive_by_name))
    register_codec(Codec("aval", lambda v: isinstance(v, _jax.ShapedArray),
                         lambda v: ((tuple(v.shape), v.dtype), {}), _jax.make_shaped_array))
    register_codec(Codec("region", lambda v: isinstance(v, RegionRef) and v.closed,
                         lambda v: ((v.index,), {}), lambda i: RegionRef(i, True)))
    register_codec(Codec("open_region", lambda v: isinstance(v, RegionRef) and not v.closed,
                         lambda v: ((v.index,), {}), lambda i: RegionRef(i, False)))
    register_codec(Codec("keys", lambda v: isinstance(v, KeyArrayValue),
                         lambda v: ((v.impl, v.data), {}), KeyArrayValue))
    register_codec(Codec("tree", lambda v: type(v).__name__ == "PyTreeDef" and _jax.tree_is_builtin(v),
                         lambda v: ((_tree_skeleton(v),), {}), _tree_from_skeleton))


def _is_named_policy(value) -> bool:
    """A checkpoint policy that is a plain function of `jax.checkpoint_policies` (nothing_saveable, ...)."""
    import inspect

    import jax
    name = getattr(value, "__name__", None)
    return (inspect.isfunction(value) and isinstance(name, str)
            and getattr(jax.checkpoint_policies, name, None) is value)


def _named_policy(name: str):
    import jax
    value = getattr(jax.checkpoint_policies, name, None)
    if not _is_named_policy(value):
        raise KeyError(f"jax.checkpoint_policies has no policy named {name!r}")
    return value


def _abstract_mesh_encode(m):
    kwargs = {"axis_sizes": tuple(m.axis_sizes), "axis_names": tuple(m.axis_names),
              "axis_types": tuple(m.axis_types)}
    if getattr(m, "abstract_device", None) is not None:  # inside shard_map: must match the context mesh
        kwargs["abstract_device"] = m.abstract_device
    return (), kwargs


def _abstract_mesh_decode(axis_sizes, axis_names, axis_types, abstract_device=None):
    from jax.sharding import AbstractMesh
    if abstract_device is None:
        return AbstractMesh(axis_sizes, axis_names, axis_types)
    return AbstractMesh(axis_sizes, axis_names, axis_types, abstract_device=abstract_device)


def _primitive_by_name(name: str):
    prim = _jax.primitive(name)
    if prim is None:
        raise KeyError(f"no JAX primitive named {name!r} is known in this process")
    return prim


class _Leaf:
    """The `*` in a written pytree structure."""

    def __repr__(self):
        return "*"


LEAF = _Leaf()


def _tree_skeleton(treedef):
    import jax
    return jax.tree_util.tree_unflatten(treedef, [LEAF] * treedef.num_leaves)


def _tree_from_skeleton(skeleton):
    import jax
    return jax.tree_util.tree_structure(skeleton, is_leaf=lambda x: x is LEAF)


_register_builtin_codecs()


# -- writing ----------------------------------------------------------------------------------------

INLINE_ARRAY_LIMIT = 16          # arrays up to this many elements print their numbers
BASE64_ARRAY_LIMIT = 1 << 20     # larger arrays up to this many bytes print as base64, beyond as refs


def format_value(value) -> str:
    """The text of a param value (see the module docstring for the grammar)."""
    if value is None:
        return "None"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is LEAF:
        return "*"
    if isinstance(value, int) and not isinstance(value, enum.Enum):
        return str(int(value))
    if isinstance(value, float) and type(value) is float:
        return format_float(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, ArrayValue):
        return format_array(value.array, ref_to=value)
    if isinstance(value, Opaque):
        return format_ref(value.obj)
    tag = enum_tag(value)
    if tag is not None:
        return f"#{tag}.{value.name}"
    codec = codec_for(value)
    if codec is not None:
        args, kwargs = codec.encode(value)
        inner = [format_value(a) for a in args]
        inner += [f"{k}={format_value(v)}" for k, v in kwargs.items()]
        return f"#{codec.tag}({', '.join(inner)})"
    if type(value) is tuple:
        if len(value) == 1:
            return f"({format_value(value[0])},)"
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if type(value) is list:
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if type(value) is dict:
        return "dict{" + ", ".join(f"{format_value(k)}: {format_value(v)}" for k, v in value.items()) + "}"
    if type(value) is frozenset:
        items = sorted((format_value(v) for v in value))
        return "set{" + ", ".join(items) + "}"
    if _is_dtype(value):
        return dtype_name(value)
    if isinstance(value, (np.generic,)):
        return format_array(np.asarray(value))
    return format_ref(value)


def format_ref(obj) -> str:
    return f"&{ref_number(obj)}<{type(obj).__name__}>"


def format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def format_array(array: np.ndarray, ref_to: ArrayValue | None = None) -> str:
    """`#array(f32[2], [1.0, 2.0])`, base64 bytes for larger arrays, or beyond that a reference.

    The reference is to `ref_to` (the ArrayValue holding `array`) when given, so that text parsed
    back from a reference prints the same reference again.
    """
    from .printer import shape_text
    head = f"{dtype_name(array.dtype)}{shape_text(array.shape)}"
    if array.size <= INLINE_ARRAY_LIMIT and array.dtype.kind in "biuf" and array.dtype.itemsize <= 8:
        flat = [format_value(_py_scalar(x)) for x in array.reshape(-1)]
        return f"#array({head}, [{', '.join(flat)}])"
    if array.nbytes <= BASE64_ARRAY_LIMIT:
        data = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")
        return f"#array({head}, \"{data}\")"
    return format_ref(ref_to if ref_to is not None else ArrayValue(array))


def _py_scalar(x):
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if np.issubdtype(type(x), np.integer):
        return int(x)
    return float(x)


def array_from_text(shape, dtype, data) -> ArrayValue:
    """Rebuild an array param from its shape, dtype and numbers or base64 bytes."""
    dtype = np.dtype(dtype)
    if isinstance(data, str):
        raw = base64.b64decode(data.encode("ascii"), validate=True)
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    else:
        array = np.array(data, dtype=dtype).reshape(shape)
    return ArrayValue(array)


def _is_dtype(value) -> bool:
    return isinstance(value, np.dtype) or _jax.is_key_dtype(value)


def _quote(text: str) -> str:
    import json
    return json.dumps(text)
