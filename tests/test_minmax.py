"""The formulas' max() and min() (perfmodel.minmax): sympy's values, without sympy's pairwise
simplification at build time."""

from __future__ import annotations

import numpy as np
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from perfmodel.minmax import Max, Min

X, Y, Z = sp.symbols("x y z", real=True)
TERMS = [X, Y, Z, X + Y, 2 * X - Z, X * Y, sp.Integer(0), sp.Integer(3), sp.Rational(-1, 2)]

terms = st.lists(st.sampled_from(TERMS), min_size=1, max_size=6)
values = st.tuples(*[st.floats(-10, 10, allow_nan=False)] * 3)


@settings(max_examples=60, deadline=None, database=None)
@given(args=terms, nested=terms, point=values)
def test_values_are_sympys(args, nested, point):
    for ours, theirs, pick in ((Max, sp.Max, max), (Min, sp.Min, min)):
        expr = ours(*args, ours(*nested))
        reference = theirs(*args, theirs(*nested))
        got = sp.lambdify((X, Y, Z), expr, modules="numpy")(*point)
        want = sp.lambdify((X, Y, Z), reference, modules="numpy")(*point)
        assert got == want
        direct = pick(float(a.subs(dict(zip((X, Y, Z), point)))) for a in [*args, *nested])
        assert got == direct
        # substituting numbers for every symbol gives a number, as sympy's class does
        assert float(expr.subs(dict(zip((X, Y, Z), point)))) == direct


def test_built_as_written_with_only_the_cheap_reductions():
    # nested ones flattened, duplicates merged, numbers reduced to one
    assert Min(Z, Min(X, Z)) == Min(X, Z)
    assert Max(3, X, 5, Max(X, 2)).args == Max(5, X).args
    assert Max(2, 3) == 3 and Min(X) == X
    # what sympy's Max would drop (x + y ≥ x when y ≥ 0) is kept: it is not compared
    y_nonneg = sp.Symbol("y_nonneg", nonnegative=True)
    assert sp.Max(X, X + y_nonneg) == X + y_nonneg
    assert len(Max(X, X + y_nonneg).args) == 2
    # printed, lambdified and cached under sympy's names
    assert str(Max(X, Y)) == "Max(x, y)" and str(Min(X, Y)) == "Min(x, y)"
    assert isinstance(Max(X, Y), sp.Max) and isinstance(Min(X, Y), sp.Min)
    f = sp.lambdify((X, Y), [Max(X, Y), Min(X, Y)], modules="numpy")
    np.testing.assert_array_equal(f(np.array([1.0, 4.0]), np.array([3.0, 2.0])), [[3.0, 4.0], [1.0, 2.0]])
