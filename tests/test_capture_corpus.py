"""Round-trip corpus: every primitive family JAX can put in a jaxpr, captured, printed, parsed, verified
and lowered, compared differentially against plain JAX.

Each case checks: `g = sk.capture(fn, *args)`; `str(sk.ir.parse(str(g))) == str(g)`; both graphs
verify; `sk.lower(parse(text))(*args)` equals `fn(*args)` (exact for ints/bools, a tolerance for floats).
Shapes are tiny so the whole file stays fast.
"""
from __future__ import annotations

import functools
import re

import jax
import jax.experimental
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import shardkit as sk

# -- the check -------------------------------------------------------------------------------------


def _leaf_array(x):
    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x)), "key"
    return np.asarray(x), None


def assert_trees_close(got, want, rtol=1e-5, atol=1e-5):
    got_leaves, got_tree = jax.tree_util.tree_flatten(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten(want)
    assert got_tree == want_tree, f"structure {got_tree} != {want_tree}"
    for i, (a, b) in enumerate(zip(got_leaves, want_leaves)):
        a, ka = _leaf_array(a)
        b, kb = _leaf_array(b)
        assert ka == kb, f"leaf {i}: key-ness differs"
        assert a.shape == b.shape, f"leaf {i}: shape {a.shape} != {b.shape}"
        assert a.dtype == b.dtype, f"leaf {i}: dtype {a.dtype} != {b.dtype}"
        if a.dtype.kind in "biu" or ka:
            np.testing.assert_array_equal(a, b, err_msg=f"leaf {i}")
        else:
            a64 = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64)
            b64 = b.astype(a64.dtype)
            np.testing.assert_allclose(a64, b64, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"leaf {i}")


# Params that hold in-process Python objects print as `&N<Type>` references; the text then parses only
# in the process that printed it. These are the ops where that is a genuine limitation: custom
# derivative rules and host callbacks are Python functions, `reduce` (a custom reducer) keeps its Python
# `computation` beside the jaxpr region that lowering uses, and arrays over 1 MiB print by reference.
# The graph header's pytree structure is a reference when it has non-builtin nodes (NamedTuples).
IN_PROCESS_OPS = {"custom_jvp_call", "custom_vjp_call", "pure_callback", "io_callback", "debug_callback",
                  "reduce", "constant", "custom_vmap_call"}
_REF = re.compile(r"&[0-9]+<(\w+)>")


def check_references(text):
    """Every in-process reference in `text` sits on an op of IN_PROCESS_OPS (or is a header pytree)."""
    for line in text.split("\n"):
        if not _REF.search(line):
            continue
        if line.startswith("graph "):
            assert set(_REF.findall(line)) <= {"PyTreeDef"}, line
            continue
        head = line.split(" = ", 1)[-1].lstrip()
        op = head[:head.index("(")]
        assert op in IN_PROCESS_OPS, f"op {op} prints an in-process reference: {line.strip()[:300]}"


def roundtrip(fn, *args, mesh=None, rtol=1e-5, atol=1e-5, expect=(), **kwargs):
    """Capture, print, parse, verify, lower; compare with plain JAX. Returns the parsed graph.

    `expect`: op names the captured graph must contain (so a case really exercises its primitive).
    """
    g = sk.capture(fn, *args, **kwargs)
    text = str(g)
    parsed = sk.ir.parse(text)
    assert str(parsed) == text
    g.verify()
    parsed.verify()
    check_references(text)
    missing = set(expect) - op_names(parsed)
    assert not missing, f"the graph has no {sorted(missing)} op: {sorted(op_names(parsed))}"
    got = sk.lower(parsed, mesh=mesh)(*args, **kwargs)
    want = jax.jit(fn)(*args, **kwargs)
    assert_trees_close(got, want, rtol=rtol, atol=atol)
    return parsed


def op_names(graph) -> set[str]:
    return {op.name for op in graph.walk()}


# -- inputs ------------------------------------------------------------------------------------------

_rng = np.random.default_rng(0)
X = jnp.asarray(_rng.normal(size=(3, 4)), jnp.float32)
Y = jnp.asarray(_rng.normal(size=(3, 4)), jnp.float32)
POS = jnp.asarray(_rng.uniform(0.2, 2.0, size=(3, 4)), jnp.float32)
UNIT = jnp.asarray(_rng.uniform(-0.9, 0.9, size=(3, 4)), jnp.float32)
I = jnp.asarray(_rng.integers(-50, 50, size=(3, 4)), jnp.int32)
J = jnp.asarray(_rng.integers(1, 9, size=(3, 4)), jnp.int32)
U = jnp.asarray(_rng.integers(0, 2**31, size=(3, 4)), jnp.uint32)
B = jnp.asarray(_rng.integers(0, 2, size=(3, 4)).astype(bool))
C = jnp.asarray(_rng.normal(size=(3, 4)) + 1j * _rng.normal(size=(3, 4)), jnp.complex64)
SPECIAL = jnp.asarray([[0.0, -0.0, 1.5, -2.5], [np.inf, -np.inf, np.nan, 0.5], [3.7, -3.5, 2.5, 1e-30]],
                      jnp.float32)
SPD = (lambda a: jnp.asarray(a @ a.T + 4 * np.eye(4), jnp.float32))(_rng.normal(size=(4, 4)))
SQ = jnp.asarray(_rng.normal(size=(4, 4)) + 3 * np.eye(4), jnp.float32)


# Op names a case's graph must contain, so each case provably exercises its primitive family.
EXPECT = {
    "sign": {"sign"}, "floor": {"floor"}, "ceil": {"ceil"}, "round_even": {"round"}, "round_away": {"round"},
    "is_finite": {"is_finite"}, "exp2": {"exp2"}, "log1p": {"log1p"}, "expm1": {"expm1"},
    "sin_cos_tan": {"sin", "cos", "tan"}, "asin_acos_atan": {"asin", "acos", "atan"},
    "hyperbolic": {"sinh", "cosh", "tanh", "asinh", "acosh", "atanh"},
    "sqrt_rsqrt_cbrt": {"sqrt", "rsqrt", "cbrt"}, "square_reciprocal": {"square"},
    "integer_pow": {"integer_pow"}, "pow": {"pow"}, "atan2": {"atan2"}, "erf_family": {"erf", "erfc", "erf_inv"},
    "lgamma_digamma": {"lgamma", "digamma"},
    "special": {"igamma", "igammac", "bessel_i0e", "bessel_i1e", "zeta", "polygamma"},
    "regularized_incomplete_beta": {"regularized_incomplete_beta"}, "logistic_lax": {"logistic"},
    "nextafter": {"nextafter"}, "rem_float": {"rem"}, "rem_int": {"rem"},
    "bitwise": {"and", "or", "xor", "not"}, "bitwise_bool": {"and", "or", "xor", "not"},
    "shifts": {"shift_left", "shift_right_logical", "shift_right_arithmetic"},
    "population_count_clz": {"population_count", "clz"},
    "complex": {"real", "imag", "conj", "complex"}, "reduce_precision": {"reduce_precision"},
    "compare_float": {"eq", "ne", "lt", "le", "gt", "ge"}, "select_n_int": {"select_n"},
    "clamp": {"clamp"}, "clamp_array": {"clamp"},
    "batch_dims": {"dot_general"}, "preferred_int": {"dot_general"},
    "ragged_dot": {"ragged_dot_general"},
    "conv_groups": {"conv_general_dilated"}, "conv_nhwc": {"conv_general_dilated"},
    "sum_prod": {"reduce_sum", "reduce_prod"}, "reduce_max_min": {"reduce_max", "reduce_min"},
    "all_any": {"reduce_and", "reduce_or"}, "reduce_and_or_xor": {"reduce_xor", "reduce_and", "reduce_or"},
    "argmin_argmax": {"argmin", "argmax"}, "custom_reduce": {"reduce"}, "multi_reduce": {"reduce"},
    "cumsum": {"cumsum"}, "cumprod": {"cumprod"}, "cummax_cummin": {"cummax", "cummin"},
    "cumlogsumexp": {"cumlogsumexp"},
    "max_pool": {"reduce_window_max"}, "min_pool": {"reduce_window_min"}, "sum_pool": {"reduce_window_sum"},
    "generic_reduce_window": {"reduce_window"}, "select_and_scatter_add": {"select_and_scatter_add"},
    "select_and_gather_add": {"select_and_gather_add"},
    "gather_clip": {"gather"}, "at_set": {"scatter"}, "at_add": {"scatter-add"}, "at_mul": {"scatter-mul"},
    "at_min_max": {"scatter-min", "scatter-max"}, "at_apply": {"scatter"},
    "dynamic_slice": {"dynamic_slice"}, "dynamic_update_slice": {"dynamic_update_slice"},
    "pad": {"pad"}, "concatenate": {"concatenate"}, "reshape": {"reshape"}, "squeeze_expand": {"squeeze"},
    "broadcast": {"broadcast_in_dim"}, "transpose": {"transpose"}, "rev": {"rev"}, "iota": {"iota"},
    "split": {"split"}, "sort_multi": {"sort"}, "top_k": {"top_k"}, "approx_max_k": {"approx_top_k"},
    "bf16_f16": {"convert_element_type"}, "bitcast": {"bitcast_convert_type"},
    "typed_key": {"random_split", "random_fold_in", "random_bits"},
    "raw_key": {"random_wrap", "random_unwrap"}, "key_data_wrap": {"random_unwrap", "random_wrap"},
    "make_key_inside": {"random_seed"}, "rng_bit_generator": {"rng_bit_generator"},
    "fft_ifft": {"fft"}, "cholesky": {"cholesky"}, "eigh": {"eigh"}, "qr": {"qr"},
    "svd": {"svd"}, "lu": {"lu"}, "triangular_solve": {"triangular_solve"},
    "solve_inv_det": {"custom_linear_solve"}, "eig_cpu": {"eig"}, "tridiagonal_solve": {"tridiagonal_solve"},
    "nested_jit": {"jit"}, "closed_call": {"closed_call"}, "scan": {"scan"}, "fori_dynamic": {"while"},
    "while_loop": {"while"}, "while_cond_consts": {"while"}, "cond": {"cond"}, "switch": {"cond"},
    "custom_jvp_nn": {"custom_jvp_call"}, "custom_vjp": {"custom_vjp_call"},
    "checkpoint_policy": {"remat2"}, "checkpoint_names": {"remat2", "name"},
    "optimization_barrier": {"optimization_barrier"}, "composite": {"composite"},
    "platform_dependent": {"platform_index", "cond"}, "custom_vmap": {"custom_vmap_call"},
    "pure_callback": {"pure_callback"}, "io_callback": {"io_callback"}, "debug_print": {"debug_print"},
    "debug_callback": {"debug_callback"},
}


def case(id, fn, *args, **opts):
    opts.setdefault("expect", EXPECT.get(id, ()))
    return pytest.param(fn, args, opts, id=id)


def run_cases(fn, args, opts):
    roundtrip(fn, *args, **opts)


# -- elementwise math ----------------------------------------------------------------------------------

ELEMENTWISE = [
    case("neg", lax.neg, X), case("abs", jnp.abs, X), case("sign", jnp.sign, SPECIAL),
    case("floor", jnp.floor, SPECIAL), case("ceil", jnp.ceil, SPECIAL),
    case("round_even", jnp.round, SPECIAL),
    case("round_away", lambda x: lax.round(x, lax.RoundingMethod.AWAY_FROM_ZERO), SPECIAL),
    case("is_finite", jnp.isfinite, SPECIAL), case("isnan", jnp.isnan, SPECIAL),
    case("exp", jnp.exp, X), case("exp2", jnp.exp2, X), case("log", jnp.log, POS),
    case("log1p", jnp.log1p, POS), case("expm1", jnp.expm1, X),
    case("sin_cos_tan", lambda x: (jnp.sin(x), jnp.cos(x), jnp.tan(x)), UNIT),
    case("asin_acos_atan", lambda x: (jnp.arcsin(x), jnp.arccos(x), jnp.arctan(x)), UNIT),
    case("hyperbolic", lambda x, p: (jnp.sinh(x), jnp.cosh(x), jnp.tanh(x), jnp.arcsinh(x),
                                     jnp.arccosh(p + 1), jnp.arctanh(x * 0.5)), UNIT, POS),
    case("sqrt_rsqrt_cbrt", lambda x: (jnp.sqrt(x), lax.rsqrt(x), jnp.cbrt(-x)), POS),
    case("square_reciprocal", lambda x: (jnp.square(x), jnp.reciprocal(x)), POS),
    case("integer_pow", lambda x: (x ** 3, lax.integer_pow(x, -2), x ** 0), POS),
    case("pow", lambda x, y: (jnp.power(x, y), x ** 1.5), POS, X),
    case("atan2", jnp.arctan2, X, Y),
    case("erf_family", lambda x, u: (lax.erf(x), lax.erfc(x), lax.erf_inv(u)), X, UNIT),
    case("lgamma_digamma", lambda x: (lax.lgamma(x), lax.digamma(x)), POS, rtol=1e-4, atol=1e-4),
    case("special", lambda p, q: (lax.igamma(p, q), lax.igammac(p, q), lax.bessel_i0e(p),
                                  lax.bessel_i1e(p), lax.zeta(p + 1.5, q),
                                  lax.polygamma(jnp.ones_like(p), q),
                                  lax.random_gamma_grad(p, q)), POS, POS + 0.5, rtol=1e-3, atol=1e-4),
    case("regularized_incomplete_beta",
         lambda a, b, x: lax.betainc(a, b, x), POS, POS + 1.0, jnp.abs(UNIT), rtol=1e-3, atol=1e-4),
    case("logistic", jax.nn.sigmoid, X), case("logistic_lax", lax.logistic, X),
    case("nextafter", jnp.nextafter, X, Y),
    case("rem_float", lax.rem, X, POS), case("rem_int", lax.rem, I, J), case("fmod", jnp.fmod, X, POS),
    case("mod_int", jnp.mod, I, J), case("floor_divide", jnp.floor_divide, I, J),
    case("add_sub_mul_div", lambda x, y: (x + y, x - y, x * y, x / (y + 3.0)), X, Y),
    case("int_arith", lambda a, b: (a + b, a - b, a * b, lax.div(a, b), -a, jnp.abs(a), jnp.sign(a)), I, J),
    case("max_min", lambda x, y: (jnp.maximum(x, y), jnp.minimum(x, y), lax.max(x, y)), X, Y),
    case("copysign", jnp.copysign, X, Y),
    case("bitwise", lambda a, b: (a & b, a | b, a ^ b, ~a, jnp.logical_not(a > 0)), I, J),
    case("bitwise_bool", lambda a, b: (a & b, a | b, a ^ b, ~a), B, B[::-1]),
    case("shifts", lambda a, s: (lax.shift_left(a, s), lax.shift_right_logical(a, s),
                                 lax.shift_right_arithmetic(a, s)), I, J),
    case("shifts_unsigned", lambda a: (a << 3, a >> 5), U),
    case("population_count_clz", lambda a, u: (lax.population_count(a), lax.clz(a),
                                               lax.population_count(u), lax.clz(u)), I, U),
    case("complex", lambda c, x: (jnp.real(c), jnp.imag(c), jnp.conj(c), jnp.abs(c),
                                  lax.complex(x, x), jnp.exp(c), c * c, jnp.angle(c)), C, X),
    case("reduce_precision", lambda x: lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10), X),
    case("accuracy", lambda x: (lax.exp(x, accuracy=lax.Tolerance(atol=1e-5, rtol=1e-5)),
                                lax.tanh(x, accuracy=lax.AccuracyMode.HIGHEST)), X),
]


@pytest.mark.parametrize("fn,args,opts", ELEMENTWISE)
def test_elementwise(fn, args, opts):
    run_cases(fn, args, opts)


# -- comparisons and selection ---------------------------------------------------------------------------

COMPARE_SELECT = [
    case("compare_float", lambda x, y: (x == y, x != y, x < y, x <= y, x > y, x >= y), X, X.at[0].set(0.0)),
    case("compare_int", lambda a, b: (a == b, a < b, a >= b, jnp.equal(a, 3)), I, J),
    case("compare_unsigned", lambda a: (a > 7, a <= jnp.uint32(2**31 - 5)), U),
    case("compare_bool", lambda a, b: (a == b, a != b, a < b), B, B[::-1]),
    case("isclose", lambda x, y: jnp.isclose(x, y + 1e-7), X, X),
    case("select_n_bool", lambda p, x, y: lax.select_n(p, x, y), B, X, Y),
    case("select_n_int", lambda x, y: lax.select_n(jnp.clip(jnp.arange(12).reshape(3, 4) % 3, 0, 2),
                                                   x, y, x * y), X, Y),
    case("select", lambda p, x, y: lax.select(p, x, y), B, X, Y),
    case("where", lambda x, y: jnp.where(x > 0, x, y), X, Y),
    case("where_scalar", lambda x: jnp.where(x > 0, x, 0.0), X),
    case("clamp", lambda x: (lax.clamp(-0.5, x, 0.5), jnp.clip(x, -1.0, 1.0)), X),
    case("clamp_array", lambda lo, x, hi: lax.clamp(lo, x, hi), X - 1, X, X + 1),
    case("clip_int", lambda a: jnp.clip(a, -10, 10), I),
]


@pytest.mark.parametrize("fn,args,opts", COMPARE_SELECT)
def test_compare_select(fn, args, opts):
    run_cases(fn, args, opts)


# -- dot_general and convolutions --------------------------------------------------------------------

A3 = jnp.asarray(_rng.normal(size=(2, 3, 4)), jnp.float32)
B3 = jnp.asarray(_rng.normal(size=(2, 4, 5)), jnp.float32)
I8 = jnp.asarray(_rng.integers(-8, 8, size=(3, 4)), jnp.int8)

DOT = [
    case("matmul", jnp.matmul, X, Y.T),
    case("dot_vec", jnp.dot, X[0], Y[0]),
    case("batch_dims", lambda a, b: lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,)))), A3, B3),
    case("einsum", lambda a, b: jnp.einsum("bij,bjk->bik", a, b), A3, B3),
    case("einsum_multi", lambda a, b, c: jnp.einsum("bij,bjk,kl->bil", a, b, c), A3, B3,
         jnp.ones((5, 2), jnp.float32)),
    case("preferred_int", lambda a, b: lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                                       preferred_element_type=jnp.int32), I8, I8),
    case("preferred_bf16", lambda a, b: jnp.matmul(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
                                                   preferred_element_type=jnp.float32), X, Y.T, rtol=1e-2),
    case("precision_highest", lambda a, b: jnp.matmul(a, b, precision=lax.Precision.HIGHEST), X, Y.T),
    case("precision_pair", lambda a, b: lax.dot(a, b, precision=(lax.Precision.HIGH, lax.Precision.DEFAULT)),
         X, Y.T, rtol=1e-3, atol=1e-3),
    case("precision_string", lambda a, b: jnp.dot(a, b, precision="highest"), X, Y.T),
    case("tensordot", lambda a, b: jnp.tensordot(a, b, axes=([1, 2], [1, 0])), A3, jnp.ones((4, 3, 7))),
    case("outer", jnp.outer, X[0], Y[1]),
    case("int_dot", jnp.matmul, I, J.T),
    case("algorithm_preset", lambda a, b: jnp.dot(a, b, precision=lax.DotAlgorithmPreset.F32_F32_F32), X, Y.T),
    case("ragged_dot", lambda a, b, g: lax.ragged_dot(a, b, g), jnp.ones((4, 3)), jnp.arange(30.0).reshape(2, 3, 5),
         jnp.asarray([1, 3], jnp.int32)),
]


@pytest.mark.parametrize("fn,args,opts", DOT)
def test_dot_general(fn, args, opts):
    run_cases(fn, args, opts)


IMG = jnp.asarray(_rng.normal(size=(2, 4, 6, 6)), jnp.float32)       # NCHW
KER = jnp.asarray(_rng.normal(size=(6, 4, 3, 3)), jnp.float32)       # OIHW
IMG_NHWC = IMG.transpose(0, 2, 3, 1)
KER_HWIO = KER.transpose(2, 3, 1, 0)

CONV = [
    case("conv_valid", lambda x, k: lax.conv(x, k, (1, 1), "VALID"), IMG, KER, rtol=1e-4, atol=1e-4),
    case("conv_strides_same", lambda x, k: lax.conv_general_dilated(x, k, (2, 2), "SAME"), IMG, KER,
         rtol=1e-4, atol=1e-4),
    case("conv_explicit_padding_dilation",
         lambda x, k: lax.conv_general_dilated(x, k, (1, 2), ((1, 2), (0, 1)), lhs_dilation=(2, 1),
                                               rhs_dilation=(1, 2)), IMG, KER, rtol=1e-4, atol=1e-4),
    case("conv_groups", lambda x, k: lax.conv_general_dilated(x, k[:, :2], (1, 1), "SAME",
                                                              feature_group_count=2), IMG, KER,
         rtol=1e-4, atol=1e-4),
    case("conv_batch_groups", lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                                                    batch_group_count=2), IMG, KER,
         rtol=1e-4, atol=1e-4),
    case("conv_nhwc", lambda x, k: lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST), IMG_NHWC, KER_HWIO, rtol=1e-4, atol=1e-4),
    case("conv_1d", lambda x, k: lax.conv_general_dilated(x, k, (1,), "SAME"), IMG[:, :, 0], KER[:, :, 0],
         rtol=1e-4, atol=1e-4),
    case("conv_transpose", lambda x, k: lax.conv_transpose(x, k, (2, 2), "SAME",
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC")),
         IMG_NHWC, KER_HWIO[:, :, :, :4], rtol=1e-4, atol=1e-4),
    case("conv_preferred", lambda x, k: lax.conv_general_dilated(
        x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), (1, 1), "VALID", preferred_element_type=jnp.float32),
        IMG, KER, rtol=5e-2, atol=5e-2),
]


@pytest.mark.parametrize("fn,args,opts", CONV)
def test_conv(fn, args, opts):
    run_cases(fn, args, opts)


# -- reductions, cumulative ops, windows ------------------------------------------------------------------


def _custom_reduce(x):
    return lax.reduce(x, 0.0, lambda a, b: a + jnp.abs(b), (1,))


REDUCE = [
    case("sum_prod", lambda x: (jnp.sum(x), jnp.sum(x, axis=1), jnp.prod(x, axis=0)), X),
    case("reduce_max_min", lambda x: (jnp.max(x), jnp.min(x, axis=1), jnp.amax(x, axis=(0, 1))), X),
    case("int_reductions", lambda a: (jnp.sum(a, axis=0), jnp.max(a), jnp.min(a, 1), jnp.prod(a[:, :2], 1)), I),
    case("all_any", lambda b: (jnp.all(b), jnp.any(b, axis=0), jnp.all(b, axis=1)), B),
    case("reduce_and_or_xor", lambda a: (lax.reduce(a, 0, lax.bitwise_xor, (0,)),
                                         lax.reduce(a, -1, lax.bitwise_and, (1,)),
                                         lax.reduce(a, 0, lax.bitwise_or, (0, 1))), I),
    case("reduce_xor_bool", lambda b: lax.reduce(b, False, lax.bitwise_xor, (1,)), B),
    case("argmin_argmax", lambda x: (jnp.argmax(x), jnp.argmin(x, axis=0), jnp.argmax(x, axis=1)), X),
    case("argmax_int", lambda a: lax.argmax(a, 1, jnp.int32), I),
    case("mean_var_std", lambda x: (jnp.mean(x), jnp.var(x, axis=0), jnp.std(x, axis=1)), X),
    case("logsumexp", lambda x: jax.nn.logsumexp(x, axis=1), X),
    case("softmax", lambda x: jax.nn.softmax(x, axis=-1), X),
    case("custom_reduce", _custom_reduce, X),
    case("multi_reduce", lambda x, a: lax.reduce((x, a), (0.0, 0), lambda p, q: (p[0] + q[0], p[1] + q[1]),
                                                 (0,)), X, I),
    case("norm", lambda x: (jnp.linalg.norm(x), jnp.linalg.norm(x, axis=1)), X),
]


@pytest.mark.parametrize("fn,args,opts", REDUCE)
def test_reductions(fn, args, opts):
    run_cases(fn, args, opts)


CUMULATIVE = [
    case("cumsum", lambda x: (jnp.cumsum(x, axis=1), lax.cumsum(x, 0, reverse=True)), X),
    case("cumprod", lambda x: jnp.cumprod(x, axis=0), X),
    case("cummax_cummin", lambda x: (lax.cummax(x, 1), lax.cummin(x, 0, reverse=True)), X),
    case("cumlogsumexp", lambda x: lax.cumlogsumexp(x, 1), X),
    case("cumsum_int", lambda a: jnp.cumsum(a), I),
    case("cumsum_bool", lambda b: jnp.cumsum(b, axis=1), B),
]


@pytest.mark.parametrize("fn,args,opts", CUMULATIVE)
def test_cumulative(fn, args, opts):
    run_cases(fn, args, opts)


IMG4 = jnp.asarray(_rng.normal(size=(2, 6, 6, 3)), jnp.float32)       # NHWC


def max_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def sum_pool(x):
    return lax.reduce_window(x, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")


def avg_pool(x):
    return lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (0, 0), (0, 0))) / 4.0


WINDOWS = [
    case("max_pool", max_pool, IMG4),
    case("min_pool", lambda x: lax.reduce_window(x, jnp.inf, lax.min, (1, 3, 3, 1), (1, 2, 2, 1), "SAME"), IMG4),
    case("sum_pool", sum_pool, IMG4),
    case("avg_pool", avg_pool, IMG4),
    case("window_dilation", lambda x: lax.reduce_window(x, 0.0, lax.add, (1, 2, 2, 1), (1, 1, 1, 1), "VALID",
                                                        base_dilation=(1, 2, 1, 1),
                                                        window_dilation=(1, 1, 2, 1)), IMG4),
    case("generic_reduce_window", lambda x: lax.reduce_window(x, 1.0, lambda a, b: a * jnp.abs(b) + 0.0,
                                                              (1, 2, 2, 1), (1, 2, 2, 1), "VALID"), IMG4),
    case("select_and_scatter_add", jax.grad(lambda x: jnp.sum(max_pool(x) ** 2)), IMG4),
    case("select_and_gather_add", lambda x, t: jax.jvp(max_pool, (x,), (t,)), IMG4, IMG4 * 2),
    case("grad_avg_pool", jax.grad(lambda x: jnp.sum(jnp.sin(avg_pool(x)))), IMG4),
    case("grad_sum_pool", jax.grad(lambda x: jnp.sum(sum_pool(x) ** 2)), IMG4),
]


@pytest.mark.parametrize("fn,args,opts", WINDOWS)
def test_windows(fn, args, opts):
    run_cases(fn, args, opts)


# -- indexing: gather, scatter, slices -------------------------------------------------------------------

IDX = jnp.asarray([2, 0, 1, 2], jnp.int32)
M = jnp.asarray(_rng.normal(size=(5, 4)), jnp.float32)


def _gather_rows(x, idx, mode):
    dnums = lax.GatherDimensionNumbers(offset_dims=(1,), collapsed_slice_dims=(0,), start_index_map=(0,))
    return lax.gather(x, idx[:, None], dnums, slice_sizes=(1, x.shape[1]), mode=mode, fill_value=-1.0)


INDEXING = [
    case("static_index", lambda x: (x[1], x[:, 2], x[1:3, ::2], x[..., None], x[None, 0, -1]), M),
    case("int_array_index", lambda x, i: (x[i], x[:, i[:2]], x[i, i]), M, IDX),
    case("bool_mask_where", lambda x: jnp.where(x > 0, x, -x)[x.shape[0] - 1], M),
    case("take", lambda x, i: (jnp.take(x, i, axis=1), jnp.take(x, i + 7, axis=0, mode="clip"),
                               jnp.take(x, i + 7, axis=0, mode="fill", fill_value=0.5)), M, IDX),
    case("take_along_axis", lambda x: jnp.take_along_axis(x, jnp.argsort(x, axis=1), axis=1), M),
    case("gather_clip", lambda x, i: _gather_rows(x, i * 3, lax.GatherScatterMode.CLIP), M, IDX),
    case("gather_fill", lambda x, i: _gather_rows(x, i * 3, lax.GatherScatterMode.FILL_OR_DROP), M, IDX),
    case("gather_promise", lambda x, i: _gather_rows(x, i, lax.GatherScatterMode.PROMISE_IN_BOUNDS), M, IDX),
    case("gather_batched", lambda x, i: jax.vmap(lambda r, j: r[j])(x[:4], i), M, IDX),
    case("at_set", lambda x, i, v: x.at[i].set(v), M, IDX, jnp.ones((4, 4), jnp.float32)),
    case("at_add", lambda x, i: x.at[i, 1].add(10.0), M, IDX),
    case("at_mul", lambda x, i: x.at[i].multiply(2.0), M, IDX),
    case("at_min_max", lambda x, i: (x.at[i].min(0.0), x.at[:, i[:2]].max(0.5)), M, IDX),
    case("at_get_fill", lambda x, i: x.at[i + 3].get(mode="fill", fill_value=-2.0), M, IDX),
    case("at_set_drop", lambda x, i: x.at[i + 3].set(0.0, mode="drop"), M, IDX),
    case("at_apply", lambda x, i: x.at[i].apply(jnp.sin), M, IDX),
    case("at_set_sorted_unique", lambda x: x.at[jnp.arange(2)].set(1.0, indices_are_sorted=True,
                                                                   unique_indices=True), M),
    case("scatter_int", lambda a, i: a.at[i[:3], 0].add(jnp.int32(5)), I, IDX),
    case("segment_sum", lambda x, i: jax.ops.segment_sum(x[:4], i, num_segments=3), M, IDX),
    case("dynamic_slice", lambda x, i: (lax.dynamic_slice(x, (i, 1), (2, 3)), lax.dynamic_index_in_dim(x, i, 1),
                                        lax.dynamic_slice_in_dim(x, i, 2, 0)), M, jnp.int32(2)),
    case("dynamic_update_slice", lambda x, u, i: (lax.dynamic_update_slice(x, u, (i, i)),
                                                  lax.dynamic_update_index_in_dim(x, u[0], i, 0)),
         M, jnp.ones((2, 4), jnp.float32), jnp.int32(1)),
    case("traced_int_index", lambda x, i: (x[i], x[:, i]), M, jnp.int32(3)),
    case("slice", lambda x: (lax.slice(x, (1, 0), (4, 4), (2, 3)), lax.slice_in_dim(x, 1, 3, axis=1)), M),
]


@pytest.mark.parametrize("fn,args,opts", INDEXING)
def test_indexing(fn, args, opts):
    run_cases(fn, args, opts)


# -- shape and layout ---------------------------------------------------------------------------------

SHAPES = [
    case("pad", lambda x: (lax.pad(x, 0.0, ((1, 2, 0), (0, 0, 1))), lax.pad(x, -1.0, ((-1, 1, 1), (2, -2, 0)))), M),
    case("jnp_pad_modes", lambda x: (jnp.pad(x, 1), jnp.pad(x, ((1, 0), (2, 1)), mode="reflect"),
                                     jnp.pad(x, 2, mode="edge"), jnp.pad(x, 1, mode="wrap")), M),
    case("concatenate", lambda x, y: (jnp.concatenate([x, y, x], axis=0), jnp.hstack([x, y]),
                                      jnp.stack([x, y], axis=1)), X, Y),
    case("reshape", lambda x: (x.reshape(12), x.reshape(2, 6), x.reshape(4, 3, 1), jnp.ravel(x.T)), X),
    case("squeeze_expand", lambda x: (jnp.squeeze(x[None, :, None]), jnp.expand_dims(x, (0, 3)),
                                      lax.squeeze(x[:1], (0,))), X),
    case("broadcast", lambda x: (jnp.broadcast_to(x[0], (5, 4)), lax.broadcast_in_dim(x, (2, 3, 5, 4), (1, 3)),
                                 lax.broadcast(x, (2,)), x + x[:, :1]), X),
    case("transpose", lambda x, a: (x.T, jnp.transpose(a, (2, 0, 1)), jnp.swapaxes(a, 0, 2), jnp.moveaxis(a, 0, -1)),
         X, A3),
    case("rev", lambda x: (jnp.flip(x), jnp.flip(x, 1), lax.rev(x, (0,)), jnp.rot90(x)), X),
    case("tile_repeat", lambda x: (jnp.tile(x, (2, 1)), jnp.repeat(x, 2, axis=1)), X),
    case("split", lambda x: tuple(jnp.split(x, 2, axis=1)) + tuple(jnp.array_split(x, 3, axis=0)), X),
    case("iota", lambda: (jnp.arange(5), jnp.arange(2.0, 4.0, 0.5), lax.iota(jnp.int8, 4),
                          lax.broadcasted_iota(jnp.float32, (2, 3), 1), jnp.eye(3), jnp.tri(3, 4, 1))),
    case("triu_tril", lambda x: (jnp.triu(x), jnp.tril(x, -1)), SQ),
    case("meshgrid", lambda x, y: jnp.meshgrid(x, y), X[0], Y[1]),
    case("diagonal_trace", lambda x: (jnp.diagonal(x), jnp.trace(x), jnp.diag(x[0])), SQ),
    case("zeros_full", lambda x: (jnp.zeros_like(x), jnp.full((2, 2), 7, jnp.int16), jnp.ones(3, jnp.bool_))
         , X),
]


@pytest.mark.parametrize("fn,args,opts", SHAPES)
def test_shapes(fn, args, opts):
    run_cases(fn, args, opts)


SORTING = [
    case("sort", lambda x: (jnp.sort(x), jnp.sort(x, axis=0), jnp.sort(x.ravel(), descending=True)), X),
    case("sort_int", lambda a: jnp.sort(a, axis=1, stable=True), I),
    case("argsort", lambda x: (jnp.argsort(x), jnp.argsort(x, axis=0, descending=True)), X),
    case("sort_multi", lambda k, v, w: lax.sort((k, v, w), dimension=1, num_keys=1), I % 4, X, J),
    case("sort_two_keys", lambda k, v: lax.sort((k, v), num_keys=2, is_stable=True), I % 3, X),
    case("sort_key_val", lambda k, v: lax.sort_key_val(k, v, dimension=0), X, I),
    case("top_k", lambda x: lax.top_k(x, 2), X),
    case("top_k_int", lambda a: lax.top_k(a, 3), I),
    case("approx_max_k", lambda x: lax.approx_max_k(x, 2), X),
    case("unique_sizes", lambda a: jnp.unique(a, size=12, fill_value=0), I % 5),
    case("searchsorted", lambda s, v: jnp.searchsorted(s, v), jnp.sort(X.ravel()), Y.ravel()),
    case("median_quantile", lambda x: (jnp.median(x, axis=1), jnp.quantile(x, 0.3)), X),
]


@pytest.mark.parametrize("fn,args,opts", SORTING)
def test_sorting(fn, args, opts):
    run_cases(fn, args, opts)


CONVERT = [
    case("bf16_f16", lambda x: (x.astype(jnp.bfloat16), x.astype(jnp.float16),
                                x.astype(jnp.bfloat16).astype(jnp.float32) * 2), X, rtol=1e-2, atol=1e-2),
    case("bf16_math", lambda x: jnp.tanh(x.astype(jnp.bfloat16)) @ x.T.astype(jnp.bfloat16), X,
         rtol=5e-2, atol=5e-2),
    case("int_float", lambda x, a: (x.astype(jnp.int32), a.astype(jnp.float32), a.astype(jnp.uint8),
                                    a.astype(jnp.int8), a.astype(jnp.int16), x.astype(jnp.bool_)), SPECIAL * 0 + X, I),
    case("bool_convert", lambda b: (b.astype(jnp.int32), b.astype(jnp.float32), jnp.float32(1) * b), B),
    case("complex_convert", lambda x: x.astype(jnp.complex64) * 1j, X),
    case("bitcast", lambda x: (lax.bitcast_convert_type(x, jnp.int32), lax.bitcast_convert_type(x, jnp.uint8),
                               lax.bitcast_convert_type(x.astype(jnp.float16), jnp.int16)), X),
    case("bitcast_widen", lambda a: lax.bitcast_convert_type(a, jnp.float32),
         jnp.asarray(_rng.integers(0, 60, size=(3, 4)), jnp.uint8)),
    case("weak_type_scalars", lambda x: (x * 2, x + 1, 2 ** x, jnp.float32(3) * 1.5), X),
]


@pytest.mark.parametrize("fn,args,opts", CONVERT)
def test_convert(fn, args, opts):
    run_cases(fn, args, opts)


# -- random numbers -----------------------------------------------------------------------------------

KEY = jax.random.key(0)
RAW_KEY = jax.random.PRNGKey(1)
CLOSED_KEY = jax.random.key(42)


def _keys(k):
    a, b = jax.random.split(k)
    return (jax.random.normal(a, (3,)), jax.random.uniform(b, (2, 2), minval=-1.0, maxval=2.0),
            jax.random.bits(jax.random.fold_in(k, 7), (4,)), jax.random.split(k, 3))


RANDOM = [
    case("typed_key", _keys, KEY),
    case("raw_key", _keys, RAW_KEY),
    case("categorical", lambda k, logits: jax.random.categorical(k, logits, axis=-1), KEY, X),
    case("randint_bernoulli_perm", lambda k: (jax.random.randint(k, (5,), 0, 10), jax.random.bernoulli(k, 0.3, (4,)),
                                              jax.random.permutation(k, 6)), KEY),
    case("gamma_beta", lambda k: (jax.random.gamma(k, 2.0, (3,)), jax.random.truncated_normal(k, -1.0, 1.0, (3,))),
         KEY, rtol=1e-4, atol=1e-5),
    case("key_data_wrap", lambda k: (jax.random.key_data(k), jax.random.wrap_key_data(jax.random.key_data(k) + 1)),
         KEY),
    case("make_key_inside", lambda seed: jax.random.normal(jax.random.key(seed), (2,)), jnp.int32(3)),
    case("prngkey_inside", lambda seed: jax.random.uniform(jax.random.PRNGKey(seed), (2,)), jnp.int32(3)),
    case("closed_over_typed_key", lambda x: x + jax.random.normal(CLOSED_KEY, x.shape), X),
    case("closed_over_key_array",
         lambda x: jax.vmap(lambda k: jax.random.normal(k, ()))(jax.random.split(CLOSED_KEY, 3)) + x[0, :3], X),
    case("closed_over_raw_key", lambda x: x + jax.random.uniform(RAW_KEY, x.shape), X),
    case("rng_bit_generator", lambda k: lax.rng_bit_generator(k, (2, 3), dtype=jnp.uint32),
         jnp.asarray([1, 2, 3, 4], jnp.uint32)),
    case("rbg_key", lambda seed: jax.random.normal(jax.random.key(seed, impl="rbg"), (3,)), jnp.int32(5)),
    case("key_out", lambda k: jax.random.fold_in(k, 3), KEY),
]


@pytest.mark.parametrize("fn,args,opts", RANDOM)
def test_random(fn, args, opts):
    run_cases(fn, args, opts)


# -- fft and linear algebra ------------------------------------------------------------------------------

FFT = [
    case("fft_ifft", lambda c: (jnp.fft.fft(c), jnp.fft.ifft(c, axis=0)), C, rtol=1e-4, atol=1e-4),
    case("rfft_irfft", lambda x: (jnp.fft.rfft(x), jnp.fft.irfft(jnp.fft.rfft(x), n=4)), X, rtol=1e-4, atol=1e-4),
    case("fft2", lambda c, x: (jnp.fft.fft2(c), jnp.fft.rfft2(x), jnp.fft.irfft2(jnp.fft.rfft2(x), s=(3, 4))),
         C, X, rtol=1e-4, atol=1e-4),
    case("fftn_lax", lambda c: lax.fft(c, lax.FftType.FFT, (3, 4)), C, rtol=1e-4, atol=1e-4),
]


@pytest.mark.parametrize("fn,args,opts", FFT)
def test_fft(fn, args, opts):
    run_cases(fn, args, opts)


def _sorted_svals(a):
    return jnp.linalg.svd(a, compute_uv=False)


LINALG = [
    case("cholesky", lambda a: (jnp.linalg.cholesky(a), lax.linalg.cholesky(a, symmetrize_input=False)), SPD),
    case("eigh", lambda a: jnp.linalg.eigh(a)[0], SPD),
    case("eigh_vectors", lambda a: jnp.abs(jnp.linalg.eigh(a)[1]), SPD),
    case("qr", lambda a: tuple(jnp.abs(t) for t in jnp.linalg.qr(a)), SQ),
    case("svd", _sorted_svals, SQ),
    case("svd_full", lambda a: jnp.abs(jnp.linalg.svd(a)[0]), SQ),
    case("lu", lambda a: lax.linalg.lu(a), SQ),
    case("triangular_solve", lambda a, b: (lax.linalg.triangular_solve(jnp.tril(a), b, left_side=True, lower=True),
                                           lax.linalg.triangular_solve(jnp.triu(a), b.T, lower=False,
                                                                       transpose_a=True)), SQ, Y.T),
    case("solve_inv_det", lambda a, b: (jnp.linalg.solve(a, b), jnp.linalg.inv(a), jnp.linalg.det(a),
                                        jnp.linalg.slogdet(a)), SQ, Y.T),
    case("eig_cpu", lambda a: jnp.sort_complex(jnp.linalg.eigvals(a)), SQ),
    case("cho_solve", lambda a, b: jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a), b), SPD, Y.T),
    case("pinv", jnp.linalg.pinv, SQ),
    case("tridiagonal_solve", lax.linalg.tridiagonal_solve, jnp.asarray([0.0, 1.0, 1.0, 1.0]), jnp.full(4, 4.0),
         jnp.asarray([1.0, 1.0, 1.0, 0.0]), Y.T[:, :2]),
]


@pytest.mark.parametrize("fn,args,opts", LINALG)
def test_linalg(fn, args, opts):
    run_cases(fn, args, {"rtol": 1e-3, "atol": 1e-3, **opts})


# -- control flow and call wrappers ------------------------------------------------------------------------


@jax.jit
def _inner_jit(x, y):
    return jnp.sin(x) * y


def _closed_call(x):
    # grad of a checkpointed scan: JAX's remat partial evaluation emits a closed_call equation
    f = jax.checkpoint(lambda a: lax.scan(lambda c, r: (c * r, jnp.sin(c)), a[0], a)[1])
    return jax.grad(lambda a: jnp.sum(f(a)))(x)


@jax.custom_vjp
def _clip_grad(x):
    return x * 1.0


_clip_grad.defvjp(lambda x: (x, None), lambda _, g: (jnp.clip(g, -0.1, 0.1),))


@jax.custom_jvp
def _my_exp(x):
    return jnp.exp(x)


_my_exp.defjvp(lambda primals, tangents: (jnp.exp(primals[0]), jnp.exp(primals[0]) * tangents[0]))


def _scan_cumsum(x, reverse=False, unroll=1):
    return lax.scan(lambda c, r: (c + r, c * r), jnp.zeros(x.shape[1:]), x, reverse=reverse, unroll=unroll)


def _checkpointed(policy):
    def f(x):
        g = jax.checkpoint(lambda a: jnp.sin(a @ a.T) @ a, policy=policy)
        return jnp.sum(g(x))
    return jax.grad(f)


def _named_checkpoint(x):
    from jax.ad_checkpoint import checkpoint_name

    def inner(a):
        h = checkpoint_name(jnp.sin(a), "hidden")
        return jnp.sum(jnp.cos(h) * a)
    return jax.grad(jax.checkpoint(inner, policy=jax.checkpoint_policies.save_only_these_names("hidden")))(x)


@jax.custom_batching.custom_vmap
def _custom_vmapped(x):
    return jnp.sin(x)


_custom_vmapped.def_vmap(lambda axis_size, in_batched, x: (jnp.sin(x), in_batched[0]))


def _state_new_ref(x):
    ref = jax.new_ref(x)
    ref[0] += 1.0
    ref[...] = ref[...] * 2
    return ref[...]


def _state_ref_in_scan(x):
    def body(c, _):
        ref = jax.new_ref(c)
        ref[1:] += 1.0
        return ref[...], ref[0]
    return lax.scan(body, x, None, length=3)


def _fori(x, n):
    return lax.fori_loop(0, n, lambda i, c: c * 0.5 + i, x)


CONTROL = [
    case("nested_jit", lambda x, y: _inner_jit(x, y) + _inner_jit(y, x), X, Y),
    case("jit_static_argnums", lambda x: jax.jit(lambda a, n: a * n, static_argnums=1)(x, 3), X),
    case("jit_inline", lambda x: jax.jit(lambda a: a + 1, inline=True)(x), X),
    case("closed_call", _closed_call, X),
    case("scan", _scan_cumsum, X),
    case("scan_reverse", functools.partial(_scan_cumsum, reverse=True), X),
    case("scan_unroll", functools.partial(_scan_cumsum, unroll=2), X),
    case("scan_unroll_true", functools.partial(_scan_cumsum, unroll=True), X),
    case("scan_no_xs", lambda x: lax.scan(lambda c, _: (c * 2.0, c), x, None, length=3), X),
    case("scan_consts_and_pytree_carry", lambda x, w: lax.scan(
        lambda c, r: ({"a": c["a"] + r @ w, "b": c["b"] * 2}, jnp.tanh(r)),
        {"a": jnp.zeros(3), "b": jnp.int32(1)}, x.T), X, Y[:, :3]),
    case("fori_static", lambda x: lax.fori_loop(0, 3, lambda i, c: c * 0.5 + i, x), X),
    case("fori_dynamic", _fori, X, jnp.int32(4)),
    case("while_loop", lambda x: lax.while_loop(lambda c: c[1] < 5, lambda c: (c[0] * 1.1 + X[0, 0], c[1] + 1),
                                                (x, 0)), X),
    case("cond", lambda p, x, y: lax.cond(p, lambda a, b: a + b, lambda a, b: a - b, x, y), jnp.bool_(True), X, Y),
    case("cond_false_closure", lambda p, x: lax.cond(p > 0, lambda: x * Y, lambda: x), jnp.int32(-1), X),
    case("switch", lambda i, x: lax.switch(i, [jnp.sin, jnp.cos, lambda a: a * 2.0], x), jnp.int32(2), X),
    case("switch_clamped", lambda i, x: lax.switch(i, [jnp.sin, jnp.cos], x), jnp.int32(7), X),
    case("custom_jvp_nn", lambda x: (jax.nn.relu(x), jax.nn.softplus(x), jax.nn.gelu(x), jax.nn.silu(x),
                                     jax.scipy.special.logsumexp(x, axis=0)), X),
    case("custom_jvp_user", _my_exp, X),
    case("grad_custom_jvp", jax.grad(lambda x: jnp.sum(jax.nn.relu(x) * _my_exp(x))), X),
    case("custom_vjp", _clip_grad, X),
    case("grad_custom_vjp", jax.grad(lambda x: jnp.sum(_clip_grad(x) ** 2)), X),
    case("checkpoint_policy", _checkpointed(jax.checkpoint_policies.dots_with_no_batch_dims_saveable), X,
         rtol=1e-4, atol=1e-4),
    case("checkpoint_nothing", _checkpointed(jax.checkpoint_policies.nothing_saveable), X, rtol=1e-4, atol=1e-4),
    case("checkpoint_names", _named_checkpoint, X),
    case("grad_scan", jax.grad(lambda x: jnp.sum(_scan_cumsum(x)[1] ** 2)), X),
    case("grad_while_fori", jax.grad(lambda x: jnp.sum(lax.fori_loop(0, 3, lambda i, c: jnp.sin(c), x))), X),
    case("grad_cond", jax.grad(lambda x: lax.cond(x[0, 0] > 0, jnp.sum, lambda a: jnp.sum(a ** 2), x)), X),
    case("vmap_of_cond", jax.vmap(lambda p, x: lax.cond(p, jnp.sin, jnp.cos, x)), B[:, 0], X),
    case("hessian", jax.hessian(lambda x: jnp.sum(jnp.sin(x) ** 3)), X[0]),
    case("jvp_linearize", lambda x, t: jax.linearize(jnp.tanh, x)[1](t), X, Y),
    case("optimization_barrier", lambda x: lax.optimization_barrier((x, x * 2)), X),
    case("stop_gradient", jax.grad(lambda x: jnp.sum(lax.stop_gradient(x) * x)), X),
    case("while_cond_consts", lambda x, n: lax.while_loop(lambda c: c[1] < n, lambda c: (c[0] * 0.5, c[1] + 1),
                                                          (x, 0)), X, jnp.int32(3)),
    case("lax_map", lambda x: lax.map(jnp.sort, x, batch_size=2), X),
    case("associative_scan", lambda x: lax.associative_scan(jnp.add, x, axis=1), X),
    case("key_in_scan_carry", lambda k: lax.scan(lambda c, _: (jax.random.split(c)[0], jax.random.normal(c, ())),
                                                  k, None, length=3), KEY),
    case("key_through_cond", lambda k, p: lax.cond(p, lambda a: jax.random.fold_in(a, 1), lambda a: a, k),
         KEY, jnp.bool_(True)),
    case("composite", lambda x: lax.composite(lambda a, scale: jnp.sin(a) * scale, name="my.sin_scale")(x, scale=2.0),
         X),
    case("platform_dependent", lambda x: lax.platform_dependent(x, cpu=jnp.sin, default=jnp.cos), X),
    case("custom_vmap", _custom_vmapped, X),
    case("custom_vmap_batched", jax.vmap(_custom_vmapped), X),
    case("state_new_ref", _state_new_ref, X),
    case("state_ref_in_scan", _state_ref_in_scan, X),
]


@pytest.mark.parametrize("fn,args,opts", CONTROL)
def test_control_flow(fn, args, opts):
    run_cases(fn, args, opts)


@pytest.mark.parametrize("name", ["scan_reverse", "fori_static", "switch", "custom_jvp_user", "grad_custom_vjp",
                                  "checkpoint_names", "closed_call"])
def test_grad_through_lowered_graph(name):
    """The lowered graph is an ordinary JAX function: reverse-mode AD through it matches AD of `fn`."""
    fn, args, _ = next(p.values for p in CONTROL if p.id == name)
    argnums = tuple(i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating))

    def loss(f):
        return lambda *a: sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(f(*a))
                              if jnp.issubdtype(leaf.dtype, jnp.floating))

    lowered = sk.lower(sk.ir.parse(str(sk.capture(fn, *args))))
    got = jax.jit(jax.grad(loss(lowered), argnums=argnums))(*args)
    want = jax.jit(jax.grad(loss(fn), argnums=argnums))(*args)
    assert_trees_close(got, want, rtol=1e-4, atol=1e-5)


def test_control_flow_ops_present():
    assert "scan" in op_names(sk.capture(_scan_cumsum, X))
    assert "while" in op_names(sk.capture(_fori, X, jnp.int32(4)))
    assert "cond" in op_names(sk.capture(lambda i, x: lax.switch(i, [jnp.sin, jnp.cos], x), jnp.int32(1), X))
    assert "custom_jvp_call" in op_names(sk.capture(jax.nn.relu, X))
    assert "custom_vjp_call" in op_names(sk.capture(_clip_grad, X))
    assert "closed_call" in op_names(sk.capture(_closed_call, X))
    names = op_names(sk.capture(_checkpointed(jax.checkpoint_policies.nothing_saveable), X))
    assert "remat2" in names or "checkpoint" in names


def test_scan_params_roundtrip():
    g = sk.ir.parse(str(sk.capture(functools.partial(_scan_cumsum, reverse=True, unroll=2), X)))
    scan = next(op for op in g.walk() if op.name == "scan")
    assert scan.params["reverse"] is True
    assert scan.params["unroll"] == 2


# -- shard_map and sharding constraints -----------------------------------------------------------------


def _shard_map_cases(mesh):
    def collectives(x):
        def body(a):
            s = lax.psum(a, "data")
            g = lax.all_gather(a, "model", axis=1, tiled=True)
            n = lax.axis_size("data")
            perm = lax.ppermute(a, "data", [(i, (i + 1) % n) for i in range(n)])
            m = lax.pmax(a, ("data", "model"))
            idx = lax.axis_index("data")
            return s, g, perm, m, a * idx
        return jax.shard_map(body, mesh=mesh, in_specs=P("data", "model"),
                             out_specs=(P(None, "model"), P("data", "model"), P("data", "model"),
                                        P(), P("data", "model")))(x)

    def scatter(x):
        def body(a):
            return lax.psum_scatter(a, "data", scatter_dimension=0, tiled=True), lax.pmean(a, "model")
        return jax.shard_map(body, mesh=mesh, in_specs=P(None, "model"), out_specs=(P("data", "model"),
                                                                                   P(None, None)))(x)

    def all_to_all(x):
        def body(a):
            return lax.all_to_all(a, "data", split_axis=1, concat_axis=0, tiled=True)
        return jax.shard_map(body, mesh=mesh, in_specs=P("data", None), out_specs=P(None, "data"))(x)

    def partial_manual(x):
        return jax.shard_map(lambda a: lax.psum(a, "data"), mesh=mesh, in_specs=P("data"),
                             out_specs=P(), axis_names={"data"})(x)

    def grad_shard_map(x):
        f = jax.shard_map(lambda a: jnp.sin(a) * lax.psum(jnp.sum(a), "data"), mesh=mesh,
                          in_specs=P("data", "model"), out_specs=P("data", "model"))
        return jax.grad(lambda a: jnp.sum(f(a)))(x)

    return {"collectives": collectives, "scatter": scatter, "all_to_all": all_to_all,
            "partial_manual": partial_manual, "grad_shard_map": grad_shard_map}


@pytest.mark.parametrize("name", ["collectives", "scatter", "all_to_all", "partial_manual", "grad_shard_map"])
def test_shard_map(mesh, name):
    x = jnp.asarray(_rng.normal(size=(8, 8)), jnp.float32)
    fn = _shard_map_cases(mesh)[name]
    g = roundtrip(fn, x, mesh=mesh)
    assert "shard_map" in op_names(g)


def test_with_sharding_constraint(mesh):
    spec = NamedSharding(mesh, P("data", "model"))

    def fn(x):
        y = jax.lax.with_sharding_constraint(jnp.sin(x), spec)
        return jax.lax.with_sharding_constraint(y @ y.T, NamedSharding(mesh, P(None, "data")))

    x = jnp.asarray(_rng.normal(size=(8, 4)), jnp.float32)
    g = roundtrip(fn, x, mesh=mesh)
    constraints = [op for op in g.walk() if op.name == "sharding_constraint"]
    assert len(constraints) == 2
    assert constraints[0].result.type.sharding.to_partition_spec() == P("data", "model")
    assert g.mesh is not None and dict(g.mesh.axes) == {"data": 4, "model": 2}
    out = sk.lower(g, mesh=mesh)(x)
    assert out.sharding.spec == P(None, "data")


def test_sharded_inputs(mesh):
    x = jax.device_put(jnp.asarray(_rng.normal(size=(8, 4)), jnp.float32), NamedSharding(mesh, P("data", None)))
    g = roundtrip(lambda a: jnp.tanh(a) * 2, x, mesh=mesh)
    assert g.inputs[0].type.sharding == sk.ir.Sharding.from_partition_spec(P("data", None), 2)


def test_jit_with_shardings(mesh):
    inner = jax.jit(lambda a: a * 2, in_shardings=NamedSharding(mesh, P("data")),
                    out_shardings=NamedSharding(mesh, P(None, "model")))
    roundtrip(lambda a: inner(a) + 1, jnp.ones((8, 4), jnp.float32), mesh=mesh)


# -- callbacks -----------------------------------------------------------------------------------------


def _host_fn(x):
    return np.sin(np.asarray(x)) * 2


CALLBACKS = [
    case("pure_callback", lambda x: jax.pure_callback(_host_fn, jax.ShapeDtypeStruct(x.shape, x.dtype), x) + 1, X),
    case("pure_callback_vmap", lambda x: jax.pure_callback(_host_fn, jax.ShapeDtypeStruct(x.shape, x.dtype), x,
                                                           vmap_method="sequential"), X),
    case("debug_print", lambda x: (jax.debug.print("x sum {s}", s=jnp.sum(x)), x * 2)[1], X),
    case("debug_callback", lambda x: (jax.debug.callback(lambda v: None, x), x + 1)[1], X),
    case("debug_print_in_scan", lambda x: lax.scan(lambda c, r: (jax.debug.print("row {r}", r=r, ordered=True) or c + r,
                                                                None), jnp.zeros(4), x)[0], X,
         expect={"scan", "debug_print"}),
    case("io_callback", lambda x: jax.experimental.io_callback(_host_fn, jax.ShapeDtypeStruct(x.shape, x.dtype), x,
                                                               ordered=True) * 2, X),
]


@pytest.mark.parametrize("fn,args,opts", CALLBACKS)
def test_callbacks(fn, args, opts):
    run_cases(fn, args, opts)


def test_callback_prints_reference():
    text = str(sk.capture(lambda x: jax.pure_callback(_host_fn, jax.ShapeDtypeStruct(x.shape, x.dtype), x), X))
    assert "&" in text  # the host function is an in-process reference


# -- constants, pytrees, kwargs ---------------------------------------------------------------------------

BIG = np.asarray(_rng.normal(size=(300, 1000)), np.float32)        # 1.2 MB: printed as a reference
MEDIUM = np.asarray(_rng.normal(size=(64, 64)), np.float32)        # base64
SMALL = np.asarray([1.5, -2.0, 3.25], np.float32)                  # inline numbers


def test_large_constant_is_reference():
    fn = lambda x: x @ BIG[:4, :8] + jnp.sum(BIG)  # noqa: E731
    g = sk.capture(fn, X)
    text = str(g)
    assert "<ArrayValue>" in text and "&" in text
    roundtrip(fn, X, rtol=1e-4, atol=1e-3)


CONSTANTS = [
    case("big_constant", lambda x: jnp.sum(BIG * 0.5, axis=0)[:4] + x, X, rtol=1e-4, atol=1e-3),
    case("medium_constant", lambda x: x @ MEDIUM[:4, :2], X),
    case("small_constant", lambda x: x[0, :3] * SMALL, X),
    case("jnp_constant", lambda x: x + jnp.arange(4.0), X),
    case("int_and_bool_constants", lambda a: (a + np.arange(4, dtype=np.int32), a > np.array([1, 2, 3, 4])), I),
    case("special_float_constants", lambda x: x + np.array([np.inf, -np.inf, 0.0, -0.0], np.float32), X),
    case("nan_constant", lambda x: jnp.where(jnp.isnan(x + np.float32(np.nan)), 1.0, x), X),
    case("bf16_constant", lambda x: x.astype(jnp.bfloat16) + jnp.asarray([1.0, 2.0, 3.0, 4.0], jnp.bfloat16), X,
         rtol=1e-2, atol=1e-2),
    case("complex_constant", lambda c: c * np.asarray([1 + 2j, 3j, -1, 0.5], np.complex64), C),
    case("scalar_literals", lambda x: x * 2.5 + 1e-20 - 3e30 * 0 + jnp.float32(np.pi), X),
]


@pytest.mark.parametrize("fn,args,opts", CONSTANTS)
def test_constants(fn, args, opts):
    run_cases(fn, args, opts)


def test_pytrees_in_and_out():
    def fn(params, batch, extra=None):
        h = jnp.tanh(batch["x"] @ params["w"] + params["b"])
        return {"out": [h, (h.sum(), None)], "aux": (batch["y"] * 2,), "none": None}

    params = {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}
    batch = {"x": X, "y": I}
    roundtrip(fn, params, batch)
    roundtrip(fn, params, batch, extra=None)


def test_kwargs():
    def fn(x, *, scale, shift=jnp.float32(0)):
        return x * scale + shift

    roundtrip(fn, X, scale=jnp.float32(2.0), shift=jnp.float32(1.0))
    roundtrip(lambda x, y=None: (x, [x + 1, y]), X, y=Y)


def test_shape_dtype_struct_args():
    g = sk.capture(lambda x, y: x @ y, jax.ShapeDtypeStruct((3, 4), jnp.float32),
                   jax.ShapeDtypeStruct((4, 2), jnp.float32))
    assert str(sk.ir.parse(str(g))) == str(g)
    out = sk.lower(g)(X, jnp.ones((4, 2)))
    np.testing.assert_allclose(out, X @ jnp.ones((4, 2)), rtol=1e-6)


def test_scalar_and_empty():
    roundtrip(lambda x: x * 2, jnp.float32(3.0))
    roundtrip(lambda x: (jnp.zeros((0, 3)), x[:0], jnp.sum(x[:0])), X[0])
    roundtrip(lambda: jnp.int32(7))


def test_training_step():
    def loss(w, x, y):
        return jnp.mean((jax.nn.relu(x @ w["a"]) @ w["b"] - y) ** 2)

    def step(w, x, y):
        l, grads = jax.value_and_grad(loss)(w, x, y)
        return l, jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, w, grads)

    w = {"a": jnp.asarray(_rng.normal(size=(4, 8)), jnp.float32), "b": jnp.asarray(_rng.normal(size=(8, 2)),
                                                                                   jnp.float32)}
    roundtrip(step, w, X, jnp.ones((3, 2)), rtol=1e-4, atol=1e-5)


# -- text is data: it parses in a process that never captured anything --------------------------------

_FRESH_PROCESS_SCRIPT = """
import json, sys
import shardkit as sk
failures = {}
for name, text in json.load(open(sys.argv[1])).items():
    try:
        graph = sk.ir.parse(text)
        assert str(graph) == text, "printing the parsed graph changed the text"
        graph.verify()
    except Exception as e:
        failures[name] = f"{type(e).__name__}: {e}"[:500]
print(json.dumps(failures))
"""

_ALL_CASES = (ELEMENTWISE + COMPARE_SELECT + DOT + CONV + REDUCE + CUMULATIVE + WINDOWS + INDEXING + SHAPES
              + SORTING + CONVERT + RANDOM + FFT + LINALG + CONTROL + CALLBACKS + CONSTANTS)


def test_every_expectation_names_a_case():
    assert set(EXPECT) <= {p.id for p in _ALL_CASES}


def test_text_parses_in_a_fresh_process(tmp_path, mesh):
    """Every corpus graph without in-process references parses, reprints and verifies in a new process
    (so parsing depends on nothing that capture left behind, e.g. primitives met while tracing)."""
    import json
    import os
    import subprocess
    import sys

    texts = {}
    for param in _ALL_CASES:
        fn, args, _ = param.values
        text = str(sk.capture(fn, *args))
        if not _REF.search(text):
            texts[param.id] = text
    x = jnp.ones((8, 8), jnp.float32)
    for name, fn in _shard_map_cases(mesh).items():
        texts["shard_map_" + name] = str(sk.capture(fn, x))
    assert len(texts) > 0.8 * len(_ALL_CASES)
    path = tmp_path / "texts.json"
    path.write_text(json.dumps(texts))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_SCRIPT, str(path)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert not failures, failures


# -- negative tests -----------------------------------------------------------------------------------


_HAND_WRITTEN = """graph @f(%0: f32[3], %1: f32[3]) {
  %2 = sin(%0) {accuracy=None} : f32[3]
  %3 = add(%2, %1) : f32[3]
  return %3
}
"""


def _parse_error(text) -> sk.ir.ParseError:
    with pytest.raises(sk.ir.ParseError) as info:
        sk.ir.parse(text)
    return info.value


def test_hand_written_text_parses_and_lowers():
    g = sk.ir.parse(_HAND_WRITTEN).verify()
    x = jnp.arange(3.0)
    np.testing.assert_allclose(sk.lower(g)(x, x), jnp.sin(x) + x, rtol=1e-6)


def test_parse_error_bad_character():
    err = _parse_error(_HAND_WRITTEN.replace("sin(", "s$n("))
    assert (err.line, err.column) == (2, 9)
    assert "unexpected character" in str(err)


def test_parse_error_bad_dtype():
    err = _parse_error(_HAND_WRITTEN.replace("%1: f32[3]", "%1: f33[3]"))
    assert (err.line, err.column) == (1, 26)
    assert "dtype" in str(err)


def test_parse_error_undefined_value():
    err = _parse_error(_HAND_WRITTEN.replace("add(%2, %1)", "add(%2, %9)"))
    assert (err.line, err.column) == (3, 16)
    assert "%9" in str(err) and "before it is defined" in str(err)


def test_parse_error_redefined_value():
    err = _parse_error(_HAND_WRITTEN.replace("%3 = add", "%2 = add").replace("return %3", "return %2"))
    assert (err.line, err.column) == (3, 3)
    assert "defined twice" in str(err)


def test_parse_error_missing_closing_brace():
    err = _parse_error(_HAND_WRITTEN.rstrip()[:-1])
    assert (err.line, err.column) == (5, 1)
    assert "end of input" in str(err)


def test_parse_error_result_count():
    err = _parse_error(_HAND_WRITTEN.replace(": f32[3]\n  %3", ": (f32[3], f32[3])\n  %3"))
    assert err.line == 2
    assert "names 1 results but gives 2 types" in str(err)


def test_parse_error_unknown_tag():
    text = _HAND_WRITTEN.replace("accuracy=None", "accuracy=#NoSuchTag(1)")
    err = _parse_error(text)
    assert (err.line, err.column) == (2, 26)
    assert "#NoSuchTag" in str(err)


def test_parse_error_unknown_reference():
    text = _HAND_WRITTEN.replace("accuracy=None", "accuracy=&999<Foo>")
    err = _parse_error(text)
    assert (err.line, err.column) == (2, 26)
    assert "&999<Foo>" in str(err) and "not known in this process" in str(err)


def test_parse_error_in_param_value():
    err = _parse_error(_HAND_WRITTEN.replace("accuracy=None", "accuracy=(1, 2"))
    assert err.line == 2
    assert "expected" in str(err)


def test_parse_never_evaluates():
    with pytest.raises(sk.ir.ParseError):
        sk.ir.parse('graph @f() {\n  %0 = constant() {value=__import__("os")} : f32[]\n  return %0\n}\n')


def _first_op(graph, name):
    return next(i for i, op in enumerate(graph.ops) if op.name == name)


def test_verify_wrong_result_type():
    g = sk.capture(lambda x, y: jnp.sin(x) + y, X, Y)
    i = _first_op(g, "sin")
    op = g.ops[i]
    bad_result = sk.ir.Value(sk.ir.TensorType((4, 3), jnp.float32))
    ops = list(g.ops)
    ops[i] = op.replace(results=(bad_result,))
    broken = g.replace(ops=tuple(ops)).substitute({op.result: bad_result})
    with pytest.raises(sk.ir.VerifyError) as info:
        broken.verify()
    assert "sin" in str(info.value)
    assert "f32[4,3]" in str(info.value)


def test_verify_use_before_definition():
    g = sk.capture(lambda x, y: jnp.cos(jnp.sin(x)) + y, X, Y)
    ops = list(g.ops)
    i, j = _first_op(g, "sin"), _first_op(g, "cos")
    ops[i], ops[j] = ops[j], ops[i]
    with pytest.raises(sk.ir.VerifyError) as info:
        g.replace(ops=tuple(ops)).verify()
    assert "cos" in str(info.value)
    assert "not defined before its use" in str(info.value)


def test_verify_bad_operand_types():
    g = sk.capture(lambda x, y: x + y, X, Y)
    wrong = sk.ir.Value(sk.ir.TensorType((5,), jnp.float32))
    broken = g.replace(inputs=(g.inputs[0], wrong))
    op = broken.ops[0]
    broken = broken.replace(ops=(op.replace(operands=(op.operands[0], wrong)),) + broken.ops[1:])
    with pytest.raises(sk.ir.VerifyError) as info:
        broken.verify()
    assert "add" in str(info.value)


def test_verify_region_type_mismatch():
    g = sk.capture(_scan_cumsum, X)
    i = _first_op(g, "scan")
    scan = g.ops[i]
    results = list(scan.results)
    results[1] = sk.ir.Value(sk.ir.TensorType((7, 4), jnp.float32))
    ops = list(g.ops)
    ops[i] = scan.replace(results=tuple(results))
    broken = g.replace(ops=tuple(ops)).substitute({scan.results[1]: results[1]})
    with pytest.raises(sk.ir.VerifyError) as info:
        broken.verify()
    assert "scan" in str(info.value)


def test_parsed_text_then_broken_verifies_with_op_name():
    broken = _HAND_WRITTEN.replace("sin(%0) {accuracy=None} : f32[3]", "sin(%0) {accuracy=None} : f32[4]")
    with pytest.raises(sk.ir.VerifyError) as info:
        sk.ir.parse(broken).verify()
    assert "sin" in str(info.value) and "f32[4]" in str(info.value)


def test_verify_unknown_op():
    with pytest.raises(sk.ir.VerifyError) as info:
        sk.ir.parse(_HAND_WRITTEN.replace("sin(", "no_such_op(")).verify()
    assert "no_such_op" in str(info.value)


def test_verify_shard_map_region_type(mesh):
    x = jnp.ones((8, 4), jnp.float32)
    fn = jax.shard_map(lambda a: lax.psum(jnp.sin(a), "data"), mesh=mesh, in_specs=P("data"), out_specs=P())
    text = str(sk.capture(fn, x))
    assert "psum" in text
    sk.ir.parse(text).verify()
    broken = text.replace("sin(%2) {accuracy=None} : f32[2,4]", "sin(%2) {accuracy=None} : f32[2,5]")
    assert broken != text
    with pytest.raises(sk.ir.VerifyError) as info:
        sk.ir.parse(broken).verify()
    assert "'sin'" in str(info.value) and "f32[2,5]" in str(info.value)
