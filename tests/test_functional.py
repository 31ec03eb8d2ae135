"""shardkit.functional: functional derivatives against closed forms and against plain JAX."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shardkit import functional as fn
from shardkit.functional import FunctionalError, Grid

X = np.array([-1.3, -0.4, 0.25, 0.9, 1.7], np.float32)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def sin():
    return fn.function(jnp.sin, [()])


@pytest.fixture(scope="module")
def line():
    return Grid.uniform(-8.0, 8.0, 4000)


@pytest.fixture(scope="module")
def cube():
    axis = Grid.uniform(-3.0, 3.0, 12)
    return Grid.product(axis, axis, axis)


# -- functions as values --------------------------------------------------------------------------------


def test_function_spec_and_call(sin):
    rho = fn.function(lambda r: jnp.exp(-jnp.sum(r ** 2)), [(3,)])
    assert sin.arg_shapes == ((),) and sin.ret_shape == ()
    assert rho.arg_shapes == ((3,),) and rho.ret_shape == ()
    close(sin(0.5), np.sin(0.5))
    close(rho(jnp.array([0.1, 0.2, 0.3])), np.exp(-0.14))


def test_arithmetic_matches_pointwise(sin):
    cos = fn.function(jnp.cos, [()])
    cases = {
        "f + g": (sin + cos, np.sin(X) + np.cos(X)),
        "f * g": (sin * cos, np.sin(X) * np.cos(X)),
        "f - g": (sin - cos, np.sin(X) - np.cos(X)),
        "f / 2": (sin / 2, np.sin(X) / 2),
        "f ** 2": (sin ** 2, np.sin(X) ** 2),
        "2 * f": (2 * sin, 2 * np.sin(X)),
        "1 - f": (1 - sin, 1 - np.sin(X)),
        "-f": (-sin, -np.sin(X)),
        "exp(f)": (fn.compose(jnp.exp, sin), np.exp(np.sin(X))),
    }
    for name, (f, want) in cases.items():
        close(jax.vmap(f)(X), want)


def test_compose_with_function_outer_and_several_inner(sin):
    cos = fn.function(jnp.cos, [()])
    outer = fn.function(lambda a, b: a * b + a, [(), ()])
    h = fn.compose(outer, sin, cos)
    close(jax.vmap(h)(X), np.sin(X) * np.cos(X) + np.sin(X))
    h2 = fn.compose(jnp.arctan2, sin, cos)
    close(jax.vmap(h2)(X), np.arctan2(np.sin(X), np.cos(X)))


def test_jax_transformations_of_a_function(sin):
    close(jax.vmap(sin)(X), np.sin(X))
    close(jax.grad(sin)(0.3), np.cos(0.3))
    close(jax.jit(sin)(0.3), np.sin(0.3))
    close(jax.jit(jax.vmap(jax.grad(sin)))(X), np.cos(X))


# -- the closed forms ---------------------------------------------------------------------------------------


def test_exp_functional_derivative(line):
    f = fn.function(lambda x: -x ** 2, [()])
    F = lambda f: fn.integrate(fn.compose(jnp.exp, f), line)  # noqa: E731
    close(F(f), math.sqrt(math.pi), 1e-4)
    dF = jax.grad(F)(f)
    assert isinstance(dF, fn.Function)
    close(dF(1.0), math.exp(-1.0))


def test_nabla_and_its_transpose(sin):
    close(jax.vmap(fn.nabla(sin))(X), np.cos(X))
    transposed = jax.linear_transpose(fn.nabla, sin)(sin)[0]
    close(jax.vmap(transposed)(X), -np.cos(X))
    _, pullback = jax.vjp(fn.nabla, sin)
    close(jax.vmap(pullback(sin)[0])(X), -np.cos(X))


def test_sobolev_functional_derivative(sin):
    grid = Grid.uniform(-20 * np.pi, 20 * np.pi, 40000)
    I = lambda f: fn.integrate(f ** 2 + fn.nabla(f) ** 2, grid)  # noqa: E731
    dI = jax.grad(I)(sin)
    close(jax.vmap(dI)(X), 4 * np.sin(X), 1e-4)


def test_dirichlet_energy_in_three_dimensions(cube):
    f = fn.function(lambda x: jnp.sum(jnp.sin(x)), [(3,)])
    F = lambda f: fn.integrate(fn.compose(lambda v: jnp.sum(v ** 2), fn.nabla(f)), cube)  # noqa: E731
    dF = jax.grad(F)(f)
    for x in ([0.3, -0.5, 1.1], [0.0, 0.0, 0.0], [2.0, -1.0, 0.5]):
        close(dF(jnp.array(x, jnp.float32)), 2 * np.sum(np.sin(x)), 1e-5)


def test_lda_exchange_potential(cube):
    c_x = 0.75 * (3 / np.pi) ** (1 / 3)
    rho = fn.function(lambda r: jnp.exp(-jnp.sum(r ** 2)), [(3,)])
    E_x = lambda rho: -c_x * fn.integrate(rho ** (4 / 3), cube)  # noqa: E731
    v_x = jax.grad(E_x)(rho)
    for r in ([0.2, 0.1, -0.3], [0.0, 0.0, 0.0], [1.0, 0.5, -0.7]):
        density = np.exp(-np.sum(np.square(r)))
        close(v_x(jnp.array(r, jnp.float32)), -(3 / np.pi) ** (1 / 3) * density ** (1 / 3), 2e-6)


def test_von_weizsaecker_potential(cube):
    rho = fn.function(lambda r: jnp.exp(-jnp.sum(r ** 2)), [(3,)])
    kinetic = fn.compose(lambda g, p: jnp.sum(g ** 2) / p / 8, fn.nabla(rho), rho)
    T_w = lambda rho: fn.integrate(fn.compose(lambda g, p: jnp.sum(g ** 2) / p / 8,  # noqa: E731
                                              fn.nabla(rho), rho), cube)
    assert kinetic.ret_shape == ()
    v_w = jax.grad(T_w)(rho)
    for r in ([0.2, 0.1, -0.3], [0.0, 0.0, 0.0], [0.6, -0.4, 0.3]):
        close(v_w(jnp.array(r, jnp.float32)), (3 - np.sum(np.square(r))) / 2, 2e-6)


def test_nesting_depth_costs_linear_equations(line):
    identity = fn.function(lambda x: x, [()])

    def chain(f, depth):
        for _ in range(depth):
            f = fn.compose(jnp.sin, f)
        return f

    counts = {}
    for depth in (8, 16):
        F = lambda f, d=depth: fn.integrate(chain(f, d), line)  # noqa: E731
        assert len(jax.make_jaxpr(F)(identity).eqns) == depth + 1
        dF = jax.grad(F)(identity)
        lowered = jax.make_jaxpr(lambda x, dF=dF: dF(x))(0.5)
        counts[depth] = _count_eqns(lowered)
    assert counts[16] <= 2 * counts[8] + 8, counts  # linear in depth, not exponential
    x, value = 0.5, 1.0
    for _ in range(16):
        value, x = value * np.cos(x), np.sin(x)
    dF16 = jax.grad(lambda f: fn.integrate(chain(f, 16), line))(identity)
    close(dF16(0.5), value, 1e-5)


def test_large_gradient_function_at_new_points_is_one_compiled_call(line):
    """A big gradient graph with no integrals inside, called at fresh points: values match the
    closed form and jit(vmap), and the call does not go node by node (no node keeps point values)."""
    identity = fn.function(lambda x: x, [()])

    def chain(f):
        for _ in range(16):
            f = fn.compose(jnp.sin, f)
        return f

    dF = jax.grad(lambda f: fn.integrate(chain(f), line))(identity)
    xs = np.linspace(-1.0, 1.0, 7).astype(np.float32)
    expected = []
    for x0 in xs:
        value, x = 1.0, float(x0)
        for _ in range(16):
            value, x = value * np.cos(x), np.sin(x)
        expected.append(value)
    close([dF(jnp.asarray(x)) for x in xs], expected, 1e-5)
    close(jax.jit(jax.vmap(dF))(jnp.asarray(xs)), expected, 1e-5)
    stack, seen = [dF], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        assert not node._grid, f"{node.kind} node cached point values"
        stack.extend(node.children)


def _count_eqns(closed) -> int:
    """Equations of a jaxpr, counting those inside the jaxprs its equations hold."""
    from shardkit.ir import _jax
    jaxpr, _ = _jax.closed_parts(closed) if _jax.is_closed_jaxpr(closed) else (closed, ())
    total = 0
    for eqn in _jax.open_parts(jaxpr)[3]:
        total += 1
        for value in _jax.eqn_parts(eqn)[3].values():
            if _jax.is_closed_jaxpr(value) or _jax.is_open_jaxpr(value):
                total += _count_eqns(value)
    return total


def test_gradient_is_differentiable_again(sin, line):
    cube_fn = lambda f: fn.integrate(f ** 3, line)  # noqa: E731
    G = jax.grad(cube_fn)(sin)                          # 3 sin^2
    close(jax.vmap(G)(X), 3 * np.sin(X) ** 2)
    close(jax.vmap(jax.grad(G))(X), 6 * np.sin(X) * np.cos(X), 1e-4)
    H = jax.grad(lambda f: fn.integrate(jax.grad(cube_fn)(f) ** 2, line))(sin)  # d/df int 9 f^4
    close(jax.vmap(H)(X), 36 * np.sin(X) ** 3, 1e-4)


def test_jit_of_functionals(sin, line):
    F = lambda f: fn.integrate(fn.compose(jnp.tanh, f) * f, line)  # noqa: E731
    close(jax.jit(F)(sin), F(sin))
    params = jnp.array([0.5, 1.5])
    h = fn.function(lambda p, x: p[0] * jnp.cos(p[1] * x), [()], params=params)
    close(jax.jit(F)(h), F(h))
    eager, jitted = jax.grad(F)(h), jax.jit(jax.grad(F))(h)
    close(jax.vmap(jitted)(X), jax.vmap(eager)(X))
    tangent = jax.jvp(F, (sin,), (h,))[1]
    eps = 1e-3
    close(tangent, (F(sin + eps * h) - F(sin - eps * h)) / (2 * eps), 2e-3)


# -- the other operators ------------------------------------------------------------------------------------


def test_linearize_and_linear_transpose():
    f = fn.function(lambda x: jnp.sum(jnp.sin(x)), [(3,)])
    lin = fn.linearize(f)
    x, t = jnp.array([0.1, 0.2, 0.3]), jnp.array([1.0, -2.0, 0.5])
    close(lin(x, t), np.dot(np.cos(x), t))
    lt = fn.linear_transpose(lin, argnum=1)
    close(lt(x, 2.0), 2.0 * np.cos(x))
    vec = fn.function(lambda x: jnp.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]]) @ x, [(3,)])
    close(fn.linear_transpose(vec)(jnp.array([1.0, 1.0])), [1.0, 3.0, 3.0])


def test_permute_partial_broadcast_zip_split():
    k = fn.function(lambda x, y: x - 2 * y, [(), ()])
    close(fn.permute_args(k, (1, 0))(1.0, 3.0), 3.0 - 2.0)
    close(fn.partial(k, 2.0)(0.5), 2.0 - 1.0)
    close(fn.partial(k, 0.5, argnums=1)(2.0), 1.0)
    u = fn.function(jnp.exp, [()])
    close(fn.broadcast_args(u, [(), ()], (1,))(7.0, 0.5), np.exp(0.5))
    s, c = fn.function(jnp.sin, [()]), fn.function(jnp.cos, [()])
    z = fn.zip(s, c)
    assert z.ret_shape == (2,)
    close(z(0.3), [np.sin(0.3), np.cos(0.3)])
    s2, c2 = fn.split(z)
    close(c2(0.3), np.cos(0.3))
    close(fn.compose(jnp.sum, z)(0.3), np.sin(0.3) + np.cos(0.3))


def test_braket_and_partial_integration():
    grid = Grid.uniform(0.0, np.pi, 2000)
    s, c = fn.function(jnp.sin, [()]), fn.function(jnp.cos, [()])
    close(fn.braket(s, s, grid), np.pi / 2, 1e-4)
    close(fn.braket(s, c, grid), 0.0, 1e-4)
    k = fn.function(lambda x, y: jnp.exp(-(x - y) ** 2), [(), ()])
    u = fn.function(jnp.sin, [()])
    layer = fn.integrate(k * fn.broadcast_args(u, [(), ()], (1,)), (None, grid))
    assert layer.arg_shapes == ((),)
    ys = np.asarray(grid.nodes)
    want = np.sum(np.asarray(grid.weights) * np.exp(-(0.4 - ys) ** 2) * np.sin(ys))
    close(layer(0.4), want, 1e-5)


def test_kernel_gradient_through_partial_integration():
    grid = Grid.uniform(0.0, 1.0, 64)
    k = fn.function(lambda x, y: jnp.sin(x + 2 * y), [(), ()])
    u = fn.function(lambda y: jnp.cos(3 * y), [()])

    def loss(k, u):
        g = fn.integrate(k * fn.broadcast_args(u, [(), ()], (1,)), (None, grid))
        return fn.integrate(g ** 2, grid)

    dk, du = jax.grad(loss, argnums=(0, 1))(k, u)
    xs, w = np.asarray(grid.nodes, np.float64), np.asarray(grid.weights, np.float64)
    K = np.sin(xs[:, None] + 2 * xs[None, :])
    g = K @ (w * np.cos(3 * xs))                               # g(x_i)
    # dL/dk(x, y) = 2 g(x) u(y);  dL/du(y) = 2 int g(x) k(x, y) dx
    close(dk(xs[3], xs[7]), 2 * g[3] * np.cos(3 * xs[7]), 1e-4)
    close(du(xs[5]), 2 * np.sum(w * g * K[:, 5]), 1e-4)


def test_gradient_through_function_params_matches_plain_jax():
    grid = Grid.uniform(-1.0, 1.0, 200)
    theta = jnp.array([1.0, 2.0, 0.3])

    def loss(theta):
        h = fn.function(lambda p, x: p[0] * jnp.sin(p[1] * x) + p[2], [()], params=theta)
        return fn.integrate(fn.compose(jnp.exp, h) + fn.nabla(h) ** 2, grid)

    def reference(theta):
        x, w = grid.nodes, grid.weights
        h = theta[0] * jnp.sin(theta[1] * x) + theta[2]
        dh = theta[0] * theta[1] * jnp.cos(theta[1] * x)
        return jnp.sum(w * (jnp.exp(h) + dh ** 2))

    close(loss(theta), reference(theta))
    close(jax.grad(loss)(theta), jax.grad(reference)(theta), 1e-4)
    close(jax.jit(jax.grad(loss))(theta), jax.grad(reference)(theta), 1e-4)
    scale = jnp.float32(1.5)
    close(jax.grad(lambda a: fn.integrate(a * fn.function(jnp.cos, [()]), grid))(scale),
          np.sum(np.asarray(grid.weights) * np.cos(np.asarray(grid.nodes))), 1e-5)


# -- bad input ---------------------------------------------------------------------------------------------------


def test_errors_name_the_operator_and_specs(sin, line, cube):
    rho = fn.function(lambda r: jnp.sum(r ** 2), [(3,)])
    with pytest.raises(FunctionalError, match="no grid"):
        fn.integrate(sin)
    with pytest.raises(FunctionalError, match=r"integrate: argument 0 .*\(f32\[3\]\) -> f32\[\]"):
        fn.integrate(rho, Grid(jnp.zeros((10, 2)), jnp.ones(10)))
    with pytest.raises(FunctionalError, match=r"integrate: argument 0"):
        fn.integrate(rho, line)
    with pytest.raises(FunctionalError, match=r"shape \(2,\).*takes shape \(3,\)"):
        rho(jnp.ones(2))
    with pytest.raises(FunctionalError, match="takes 1 argument"):
        sin(1.0, 2.0)
    with pytest.raises(FunctionalError, match=r"different arguments.*f32\[3\].*f32\[\]"):
        rho + sin
    with pytest.raises(FunctionalError, match="Grid"):
        Grid(jnp.zeros((5,)), jnp.ones(4))


def test_rules_that_cannot_exist_say_so(sin, line):
    outer = fn.function(jnp.tanh, [()])
    with pytest.raises(FunctionalError, match="inverse of the inner"):
        jax.grad(lambda o: fn.integrate(fn.compose(o, sin), line))(outer)
    with pytest.raises(FunctionalError, match="Dirac delta"):
        jax.grad(lambda f: fn.apply(f, 1.0))(sin)
    theta = jnp.array([1.0])
    with pytest.raises(FunctionalError, match="no quadrature grid"):
        h = lambda p: fn.function(lambda p, x: p[0] * x, [()], params=p)  # noqa: E731
        jax.vjp(h, theta)[1](sin)


# -- evaluation paths and functional gradient descent -------------------------------------------------------


def _operator_problem(n):
    nodes = jnp.asarray((np.arange(n) + 0.5) / n, jnp.float32)
    grid = Grid(nodes, jnp.full((n,), 1.0 / n, jnp.float32))
    u = fn.function(lambda x: jnp.sin(4 * x * jnp.pi), [()])
    target = fn.function(lambda x: jnp.cos(x * jnp.pi), [()])
    k = fn.function(lambda y, x: jnp.sin(y) + jnp.cos(x), [(), ()])
    b = fn.function(lambda x: jnp.sin(x * jnp.pi), [()])

    def layer(k, b, v, activate):
        g = fn.integrate(k * fn.broadcast_args(v, [(), ()], (1,)), (None, grid)) + b
        return fn.compose(jnp.tanh, g) if activate else g

    def loss(params):
        k1, b1, k2, b2 = params
        return fn.integrate((layer(k2, b2, layer(k1, b1, u, True), False) - target) ** 2, grid)

    return grid, loss, (k, b, k, b)


def test_functional_gradient_descent_matches_autofd():
    """AutoFD 0.0.9's neural-operator example (100-point grid): its losses after 3 steps."""
    grid, loss, params = _operator_problem(100)
    losses = []
    for _ in range(3):
        grads = jax.grad(loss)(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
        losses.append(float(loss(params)))
    close(losses, [0.7777805, 0.2846101, 0.1290203], 2e-6)


def test_cached_and_compiled_evaluation_agree():
    from shardkit.functional import engine, lowlevel
    from shardkit.functional.evaluate import evaluate
    grid, loss, params = _operator_problem(24)
    for _ in range(2):
        grads = jax.grad(loss)(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    k1 = params[0]
    cached = engine.integrate(k1, [(grid.nodes, grid.weights)] * 2)
    compiled = lowlevel.integrate(k1, [grid.nodes, grid.weights] * 2)
    close(cached, compiled, 1e-5)
    ys = jnp.linspace(0.1, 0.9, 5)
    per_point = [evaluate(k1, (y, jnp.float32(0.3))) for y in ys]
    close(jax.vmap(lambda y: k1(y, 0.3))(ys), per_point, 1e-5)
    close([k1(y, 0.3) for y in ys], per_point, 1e-5)


def test_vmap_with_an_unbatched_function_argument(sin):
    out = jax.vmap(lambda f, x: fn.apply(f, x), in_axes=(None, 0))(sin, jnp.asarray(X))
    close(out, np.sin(X))
    grid = Grid.uniform(0.0, 1.0, 16)
    scales = jnp.array([0.5, 1.0, 2.0])
    F = lambda f, a: fn.integrate(fn.compose(jnp.exp, a * f), grid)  # noqa: E731
    close(jax.vmap(F, in_axes=(None, 0))(sin, scales), [F(sin, a) for a in scales])
    dF = jax.vmap(lambda f, a: fn.apply(jax.grad(F)(f, a), 0.3), in_axes=(None, 0))(sin, scales)
    close(dF, [a * np.exp(a * np.sin(0.3)) for a in np.asarray(scales)])


# -- vmap over batches of functions -------------------------------------------------------------------------


def _scaled_sines(scales):
    return jax.vmap(lambda a: fn.function(lambda x: a * jnp.sin(x), [()]))(scales)


def test_vmap_builds_and_maps_a_batch_of_functions(line):
    scales = jnp.array([0.0, 0.5, 2.0])
    batch = _scaled_sines(scales)
    assert isinstance(batch, fn.Function) and batch.shape == (3,)
    members = [fn.function(lambda x, a=a: a * jnp.sin(x), [()]) for a in scales]
    grid = Grid.uniform(0.0, 2.0, 64)
    functionals = {
        "integral": lambda f: fn.integrate(f, grid),
        "energy": lambda f: fn.integrate(fn.compose(jnp.exp, f) + fn.nabla(f) ** 2, grid),
        "point": lambda f: fn.apply(f * f + 1.0, 0.7),
        "kernel": lambda f: fn.integrate(fn.integrate(
            fn.function(lambda x, y: jnp.cos(x - y), [(), ()]) * fn.broadcast_args(f, [(), ()], (1,)),
            (None, grid)) ** 2, grid),
    }
    for name, F in functionals.items():
        close(jax.vmap(F)(batch), [F(f) for f in members], 1e-5)
        close(jax.jit(jax.vmap(F))(batch), [F(f) for f in members], 1e-5)
    close(fn.integrate(batch, grid), [fn.integrate(f, grid) for f in members])  # mapped outside vmap
    close(batch(0.4), [f(0.4) for f in members])
    close((batch + fn.function(jnp.cos, [()]))(0.4), [f(0.4) + np.cos(0.4) for f in members])


def test_vmap_of_functional_gradients_over_a_batch(line):
    batch = _scaled_sines(jnp.array([0.5, 1.0, 2.0]))
    F = lambda f: fn.integrate(fn.compose(jnp.exp, f) * f, line)  # noqa: E731
    grads = jax.vmap(jax.grad(F))(batch)            # a batch of gradient functions
    assert isinstance(grads, fn.Function) and grads.shape == (3,)
    want = [(1 + a * np.sin(X)) * np.exp(a * np.sin(X)) for a in (0.5, 1.0, 2.0)]
    close(jax.vmap(lambda g: jax.vmap(lambda x: fn.apply(g, x))(jnp.asarray(X)))(grads), want, 1e-4)
    # per-member gradients with respect to an array inside each function
    grid = Grid.uniform(-1.0, 1.0, 50)
    G = lambda a: fn.integrate(fn.function(lambda x: a * jnp.sin(x), [()]) ** 2, grid)  # noqa: E731
    close(jax.vmap(jax.grad(G))(jnp.array([0.5, 1.0])), [jax.grad(G)(a) for a in (0.5, 1.0)])


def test_vmap_limits_are_clear_errors(sin, line):
    batch = _scaled_sines(jnp.arange(3.0))
    with pytest.raises(FunctionalError, match="enclosing jax.grad"):
        jax.grad(lambda f: jax.vmap(lambda a: fn.integrate(a * f, line))(jnp.arange(3.0)).sum())(sin)
    with pytest.raises(FunctionalError, match="cannot cross this transformation boundary"):
        jax.vmap(jax.jit(lambda f: fn.integrate(f, line)))(batch)
