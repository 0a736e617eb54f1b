"""The printer that lambdifies the cache's expressions (:func:`perfmodel.codecache.numpy_source`)
gives sympy's numbers, over every node type it prints, on broadcasting arrays; anything else goes
through sympy's own lambdify."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from perfmodel import codecache, waves
from perfmodel.minmax import Max, Min

x, y, z = sp.symbols("x y z", positive=True)
RNG = np.random.default_rng(7)
# broadcasting inputs: x over rows, y over columns, z a scalar; values around the relations' edges
X = np.array([[0.25], [1.0], [2.0], [3.5], [7.0]])
Y = np.array([0.5, 1.0, 2.0, 5.0])
Z = 3.0

EXPRESSIONS = [
    x + y * z - 3,
    2 * x * y**-2 + sp.Rational(1, 3) * z,
    x ** sp.Rational(1, 2) + y ** sp.Rational(3, 2) + x ** sp.Float(0.513),
    (x + y) ** 2 / (z - x + 10),
    Max(x, y, z, evaluate=False) - Min(x, y, evaluate=False),
    sp.ceiling(x / y) + sp.floor(x * z / 7),
    sp.sign(x - y) + sp.Abs(y - z),
    sp.Heaviside(x - y, 0) * 8 + sp.Heaviside(2 - x, 0),
    sp.Piecewise((x, x < y), (y * z, y <= 2), (z, True)),
    sp.Piecewise((1 / x, x > 2), (x**2, x >= 1), (0, True)),
    sp.Float(1.5e-6) * x - sp.Integer(-4) * y,
]


@pytest.mark.parametrize("expr", EXPRESSIONS, ids=[str(i) for i in range(len(EXPRESSIONS))])
def test_the_printer_gives_sympys_numbers(expr):
    source = codecache.numpy_source((x, y, z), [], [expr])  # printable, not the sympy fallback
    assert source.startswith("def _expressions(x, y, z):")
    ours = codecache.lambdify((x, y, z), [], [expr])(X, Y, Z)[0]
    theirs = sp.lambdify((x, y, z), [expr], "numpy")(X, Y, Z)[0]
    np.testing.assert_allclose(np.broadcast_to(ours, (5, 4)), np.broadcast_to(theirs, (5, 4)), rtol=1e-12)


def test_replacements_are_computed_once_in_order():
    t0, t1 = sp.symbols("x0 x1")
    fn = codecache.lambdify((x, y), [(t0, x + y), (t1, t0 * 2)], [t1 + t0, Max(t0, t1, evaluate=False)])
    np.testing.assert_allclose(fn(1.0, 2.0), [9.0, 6.0])


def test_other_expressions_fall_back_to_sympy():
    expr = sp.sin(x) + sp.exp(-y)
    with pytest.raises(ValueError):
        codecache.numpy_source((x, y), [], [expr])
    fn = codecache.lambdify((x, y), [], [expr])
    np.testing.assert_allclose(fn(0.5, 2.0), [np.sin(0.5) + np.exp(-2.0)], rtol=1e-15)
    heaviside_half = sp.Heaviside(x - 1)  # θ(0) = 1/2: sympy's printer has it
    assert codecache.lambdify((x,), [], [heaviside_half])(1.0)[0] == 0.5


def test_a_name_the_code_refers_to_is_not_printed():
    numpy_symbol = sp.Symbol("numpy")
    with pytest.raises(ValueError):
        codecache.numpy_source((numpy_symbol,), [], [numpy_symbol + 1])


def test_the_batch_plan_of_waves_matches_sympys_lambdify():
    """The waves' plan (Piecewise, Max/Min, floor and ceiling, after common-subexpression
    elimination) prints, and gives sympy's numbers over random batches and memory sizes."""
    exprs = waves.plan_expressions()
    symbols = {sym.name: sym for e in exprs.values() for sym in e.free_symbols}
    args = [symbols[a] for a in waves._PLAN_ARGS]
    values = [RNG.integers(1, 4096, 200).astype(float), RNG.integers(1, 32768, 200).astype(float),
              RNG.integers(1, 8192, 200).astype(float), RNG.uniform(1e9, 1e11, 200), RNG.uniform(1e8, 1e10, 200),
              RNG.uniform(1e9, 2e11, 200), np.full(200, 1.4e11), np.full(200, 16384.0),
              RNG.integers(1, 512, 200).astype(float)]
    replacements, reduced = sp.cse(list(exprs.values()), list=False)
    codecache.numpy_source(args, replacements, reduced)  # printable
    ours = codecache.lambdify_exprs(args, list(exprs.values()), cse=True)(*values)
    theirs = sp.lambdify(args, list(exprs.values()), "numpy")(*values)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(np.broadcast_to(a, (200,)), np.broadcast_to(b, (200,)), rtol=1e-12)
