"""Every bad input gets the error its message promises, naming the argument."""
import numpy as np
import pytest
from numpy.exceptions import AxisError

import fastlin

X = np.arange(12, dtype=np.float64).reshape(3, 4) / 7


def _shape(x):
    """np.shape, or (2,) where x has none (ragged lists)."""
    try:
        return np.shape(x)
    except ValueError:
        return (2,)


def _ones(x, extra=()):
    return np.ones(_shape(x) + extra)


# Each public function as f(bad) with the name of the argument `bad` is
# passed as; the other arguments are valid and shaped to fit.
DATA_ARG = {
    "normalize": (lambda x: fastlin.normalize(x, axis=None), "x"),
    "softmax": (lambda x: fastlin.softmax(x), "x"),
    "log_softmax": (lambda x: fastlin.log_softmax(x), "x"),
    "logsumexp": (lambda x: fastlin.logsumexp(x), "a"),
    "logsumexp/b": (lambda x: fastlin.logsumexp(_ones(x), b=x), "b"),
    "normalize_backward/grad": (
        lambda x: fastlin.normalize_backward(x, _ones(x), axis=None), "grad"),
    "normalize_backward/x": (lambda x: fastlin.normalize_backward(_ones(x), x, axis=None), "x"),
    "softmax_backward/grad": (lambda x: fastlin.softmax_backward(x, _ones(x)), "grad"),
    "softmax_backward/y": (lambda x: fastlin.softmax_backward(_ones(x), x), "y"),
    "log_softmax_backward/grad": (lambda x: fastlin.log_softmax_backward(x, _ones(x)), "grad"),
    "log_softmax_backward/y": (lambda x: fastlin.log_softmax_backward(_ones(x), x), "y"),
    "logsumexp_backward/grad": (
        lambda x: fastlin.logsumexp_backward(x, _ones(x, (2,)), axis=-1), "grad"),
    "logsumexp_backward/a": (lambda x: fastlin.logsumexp_backward(1.0, x), "a"),
    "logsumexp_backward/b": (lambda x: fastlin.logsumexp_backward(1.0, _ones(x), b=x), "b"),
}
DATA_IDS = list(DATA_ARG)


def re_shape(shape):
    """A shape as a regular expression matching its repr."""
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")

# functions taking `axis`, as f(array, axis)
AXIS_FUNCS = {
    "normalize": lambda a, axis: fastlin.normalize(a, axis=axis),
    "softmax": lambda a, axis: fastlin.softmax(a, axis=axis),
    "log_softmax": lambda a, axis: fastlin.log_softmax(a, axis=axis),
    "logsumexp": lambda a, axis: fastlin.logsumexp(a, axis=axis),
    "logsumexp/b": lambda a, axis: fastlin.logsumexp(a, axis=axis, b=np.ones(a.shape)),
    "normalize_backward": lambda a, axis: fastlin.normalize_backward(a, a, axis=axis),
    "softmax_backward": lambda a, axis: fastlin.softmax_backward(a, a, axis=axis),
    "log_softmax_backward": lambda a, axis: fastlin.log_softmax_backward(a, a, axis=axis),
    "logsumexp_backward": lambda a, axis: fastlin.logsumexp_backward(1.0, a, axis=axis),
}

OUT_FUNCS = {"normalize": fastlin.normalize, "softmax": fastlin.softmax,
             "log_softmax": fastlin.log_softmax}


# ------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("name", DATA_IDS)
def test_complex_is_rejected(name):
    f, arg = DATA_ARG[name]
    with pytest.raises(TypeError, match=rf"^{arg} must be real, got complex dtype complex128"):
        f(X + 1j)


@pytest.mark.parametrize("name", DATA_IDS)
@pytest.mark.parametrize("value", [X.astype(object), X.astype(str), np.array([b"1", b"2"]),
                                   np.array(["2024-01-01"], dtype="datetime64[D]")],
                         ids=["object", "str", "bytes", "datetime"])
def test_non_numeric_dtypes_are_rejected(name, value):
    f, arg = DATA_ARG[name]
    with pytest.raises(TypeError, match=rf"^{arg} must be a real numeric array, got dtype"):
        f(value)


@pytest.mark.skipif(np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps,
                    reason="longdouble is float64 on this platform")
@pytest.mark.parametrize("name", DATA_IDS)
def test_longdouble_is_rejected(name):
    f, arg = DATA_ARG[name]
    with pytest.raises(TypeError, match=rf"^{arg} has dtype float128.*float32 and float64 only"):
        f(X.astype(np.longdouble))


@pytest.mark.parametrize("name", DATA_IDS)
def test_ragged_input_is_rejected(name):
    f, arg = DATA_ARG[name]
    with pytest.raises((TypeError, ValueError),
                       match=rf"^{arg} must be array_like of real numbers"):
        f([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("name", DATA_IDS)
def test_strings_are_rejected(name):
    f, arg = DATA_ARG[name]
    with pytest.raises(TypeError, match=rf"^{arg} must be a real numeric array"):
        f("abc")


# --------------------------------------------------------------------- axis


@pytest.mark.parametrize("name", list(AXIS_FUNCS))
@pytest.mark.parametrize("axis", [2, -3, 7, (0, 2), (-3,)])
def test_out_of_bounds_axis_raises_axis_error(name, axis):
    with pytest.raises(AxisError,
                       match=r"axis: axis -?\d is out of bounds for array of dimension 2"):
        AXIS_FUNCS[name](X, axis)
    assert issubclass(AxisError, ValueError)


def test_axis_error_is_a_value_error():
    with pytest.raises(ValueError, match="out of bounds"):
        fastlin.softmax(X, axis=5)


@pytest.mark.parametrize("name", list(AXIS_FUNCS))
@pytest.mark.parametrize("axis", [(0, 0), (1, -1), [0, 1, 0]])
def test_repeated_axis_raises_value_error(name, axis):
    with pytest.raises(ValueError, match=r"^axis contains a repeated axis"):
        AXIS_FUNCS[name](X, axis)


@pytest.mark.parametrize("name", list(AXIS_FUNCS))
@pytest.mark.parametrize("axis", [1.0, "0", (0, 1.5), np.array([0.0])], ids=repr)
def test_non_integer_axis_raises_type_error(name, axis):
    with pytest.raises(TypeError, match=r"^axis must be None, an int or a tuple of ints"):
        AXIS_FUNCS[name](X, axis)


def test_numpy_integer_axes_are_accepted():
    np.testing.assert_array_equal(fastlin.softmax(X, axis=np.int64(1)), fastlin.softmax(X, axis=1))
    np.testing.assert_array_equal(fastlin.logsumexp(X, axis=[np.int32(0), 1]),
                                  fastlin.logsumexp(X, axis=(0, 1)))


def test_zero_dim_input_takes_axis_0_and_minus_1():
    """A 0-d array's one axis, as numpy's reductions (and so scipy) allow:
    scipy.special.softmax(5.0, axis=0) is 1.0; torch's F.normalize of a 0-d
    tensor is its sign.  Any other axis is out of bounds."""
    import scipy.special as sp
    for ax in (0, -1):
        assert fastlin.softmax(5.0, axis=ax) == sp.softmax(5.0, axis=ax) == 1.0
        assert fastlin.log_softmax(np.array(3.0), axis=ax) == sp.log_softmax(3.0, axis=ax)
        assert fastlin.logsumexp(np.array(3.0), axis=ax) == sp.logsumexp(3.0, axis=ax)
    assert fastlin.normalize(3.0) == 1.0 and fastlin.normalize(-2.0, axis=0) == -1.0
    with pytest.raises(AxisError):
        fastlin.softmax(5.0, axis=1)
    with pytest.raises(AxisError):
        fastlin.normalize(3.0, axis=-2)


# ---------------------------------------------------------------------- out


@pytest.mark.parametrize("name", list(OUT_FUNCS))
@pytest.mark.parametrize("shape", [(4, 3), (3, 4, 1), (12,), ()])
def test_out_of_wrong_shape(name, shape):
    with pytest.raises(ValueError, match=r"^out must have shape \(3, 4\), got "):
        OUT_FUNCS[name](X, axis=1, out=np.empty(shape))


@pytest.mark.parametrize("name", list(OUT_FUNCS))
@pytest.mark.parametrize("x, out_dtype", [(X, np.float32), (X, np.int64), (X, np.complex128),
                                          (X.astype(np.float32), np.float64),
                                          (X.astype(np.int32), np.int32)],
                         ids=["f64->f32", "f64->i64", "f64->c128", "f32->f64", "i32->i32"])
def test_out_of_wrong_dtype(name, x, out_dtype):
    with pytest.raises(TypeError, match=r"^out must have dtype float(32|64), got "):
        OUT_FUNCS[name](x, axis=1, out=np.empty(x.shape, out_dtype))


@pytest.mark.parametrize("name", list(OUT_FUNCS))
def test_read_only_out(name):
    out = np.empty(X.shape)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out must be writeable"):
        OUT_FUNCS[name](X, axis=1, out=out)
    # the input itself, read-only, as out
    x = X.copy()
    x.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out must be writeable"):
        OUT_FUNCS[name](x, axis=1, out=x)
    np.testing.assert_array_equal(x, X)


@pytest.mark.parametrize("name", list(OUT_FUNCS))
@pytest.mark.parametrize("out", [[[0.0] * 4] * 3, ((0.0,) * 4,) * 3], ids=["list", "tuple"])
def test_out_not_an_ndarray(name, out):
    with pytest.raises(TypeError, match=r"^out must be a numpy.ndarray, got (list|tuple)"):
        OUT_FUNCS[name](X, axis=1, out=out)


def test_out_is_keyword_only():
    out = np.empty(X.shape)
    with pytest.raises(TypeError):
        fastlin.softmax(X, 1, out)
    with pytest.raises(TypeError):
        fastlin.log_softmax(X, 1, out)
    with pytest.raises(TypeError):
        fastlin.normalize(X, 1, 1e-12, out)


# ----------------------------------------------------------- shape mismatch


@pytest.mark.parametrize("f, names", [
    (fastlin.normalize_backward, ("grad", "x")),
    (fastlin.softmax_backward, ("grad", "y")),
    (fastlin.log_softmax_backward, ("grad", "y")),
], ids=["normalize_backward", "softmax_backward", "log_softmax_backward"])
@pytest.mark.parametrize("grad_shape", [(4, 3), (3,), (1, 4), (3, 4, 1), ()])
def test_grad_and_input_shapes_must_match(f, names, grad_shape):
    # no broadcasting: the gradient has the shape of what it differentiates
    with pytest.raises(ValueError, match=rf"^{names[0]} and {names[1]} must have the same shape, "
                                         rf"got {re_shape(grad_shape)} and \(3, 4\)"):
        f(np.ones(grad_shape), X, axis=-1)


@pytest.mark.parametrize("axis, keepdims, grad_shape", [
    (1, False, (4,)), (1, False, (3, 2)), (1, True, (4, 1)), (0, False, (3,)),
    (None, False, (2,)), ((0, 1), True, (3, 4, 1)),
])
def test_logsumexp_backward_grad_of_wrong_shape(axis, keepdims, grad_shape):
    with pytest.raises(ValueError, match=r"^grad must have the shape of logsumexp's output"):
        fastlin.logsumexp_backward(np.ones(grad_shape), X, axis=axis, keepdims=keepdims)


@pytest.mark.parametrize("b_shape", [(4, 3), (3,), (2, 4, 3), (3, 4, 2)])
def test_logsumexp_a_and_b_not_broadcastable(b_shape):
    match = rf"^a and b must be broadcastable to one shape, got \(3, 4\) and {re_shape(b_shape)}"
    with pytest.raises(ValueError, match=match):
        fastlin.logsumexp(X, b=np.ones(b_shape))
    with pytest.raises(ValueError, match=match):
        fastlin.logsumexp_backward(1.0, X, b=np.ones(b_shape))


# ---------------------------------------------------------------------- eps


@pytest.mark.parametrize("f", [lambda eps: fastlin.normalize(X, eps=eps),
                               lambda eps: fastlin.normalize_backward(X, X, eps=eps)],
                         ids=["normalize", "normalize_backward"])
@pytest.mark.parametrize("eps, exc, match", [
    (-1e-12, ValueError, r"^eps must be a finite number >= 0, got -1e-12"),
    (-0.5, ValueError, r"^eps must be a finite number >= 0"),
    (np.nan, ValueError, r"^eps must be a finite number >= 0, got nan"),
    (np.inf, ValueError, r"^eps must be a finite number >= 0, got inf"),
    (-np.inf, ValueError, r"^eps must be a finite number >= 0"),
    ("abc", TypeError, r"^eps must be a real number, got str 'abc'"),
    (None, TypeError, r"^eps must be a real number, got NoneType None"),
    (1j, TypeError, r"^eps must be a real number"),
    (np.array([1.0, 2.0]), TypeError, r"^eps must be a real number"),
], ids=["negative", "-0.5", "nan", "inf", "-inf", "str", "None", "complex", "array"])
def test_bad_eps(f, eps, exc, match):
    with pytest.raises(exc, match=match):
        f(eps)


def test_eps_zero_and_numpy_scalars_are_accepted():
    fastlin.normalize(X, eps=0)
    fastlin.normalize(X, eps=-0.0)
    fastlin.normalize(X, eps=np.float32(1e-6))
    fastlin.normalize_backward(X, X, eps=np.int64(1))


# ----------------------------------------------- errors before any writing


def test_failed_call_leaves_out_untouched():
    out = np.full(X.shape, 7.0)
    with pytest.raises(ValueError):
        fastlin.normalize(X, eps=-1.0, out=out)
    with pytest.raises(AxisError):
        fastlin.softmax(X, axis=3, out=out)
    np.testing.assert_array_equal(out, 7.0)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")   # np.matrix
def test_out_matrix_refused_clearly():
    """np.matrix is always 2-d: the kernels' (outer, n, inner) view of it
    failed with a Cython buffer error; a plain view of it works."""
    x = np.random.default_rng(46).standard_normal((2, 3))
    m = np.matrix(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray, got numpy.matrix"):
        fastlin.softmax(x, axis=1, out=m)
    fastlin.softmax(x, axis=1, out=np.asarray(m))
    np.testing.assert_array_equal(np.asarray(m), fastlin.softmax(x, axis=1))
