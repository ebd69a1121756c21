"""Input checking and layout planning shared by every public function.

Messages name the argument, what was expected and what came.  Nothing here
loops over elements; kernels never validate.
"""
import math
import numbers
import operator

import numpy as np
from numpy.exceptions import AxisError

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def result_dtype(*arrays_and_names):
    """Computation dtype for the given (array, name) pairs.

    float32 stays float32 and float64 stays float64 (mixed inputs promote as
    numpy does); bool and integers compute in float64; float16 computes in
    float32.  Complex, object, string and other dtypes raise TypeError, as
    does longdouble (computing it in float64 would silently lose digits).
    """
    first = arrays_and_names[0][0].dtype
    if first in _FLOATS and all(a.dtype == first for a, _ in arrays_and_names):
        return first        # the common case, without result_type's cost
    dts = []
    for a, name in arrays_and_names:
        dt = a.dtype
        if dt.kind in "biu":
            dt = np.dtype(np.float64)
        elif dt.kind == "f":
            if dt.itemsize > 8:
                raise TypeError(
                    f"{name} has dtype {dt}; fastlin computes in float32 and float64 "
                    f"only (convert with {name}.astype(np.float64))")
            if dt.itemsize < 4:
                dt = np.dtype(np.float32)
        elif dt.kind == "c":
            raise TypeError(f"{name} must be real, got complex dtype {dt}")
        else:
            raise TypeError(
                f"{name} must be a real numeric array, got dtype {dt}")
        dts.append(dt)
    return np.result_type(*dts)


def is_weak_scalar(x):
    """A Python int/float/bool: like numpy (NEP 50) it does not set the dtype."""
    return isinstance(x, (int, float)) and not isinstance(x, np.generic)


def as_array(x, name):
    """np.asarray with a clear error for ragged or non-numeric input.
    Subclasses become plain ndarrays, as scipy's functions take them
    (np.matrix would turn the `*` of a formula into a matrix product)."""
    if type(x) is np.ndarray:
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{name} must be array_like of real numbers: {e}") from None
    except RuntimeError as e:
        # torch's "Can't call numpy() on Tensor that requires grad"; any other
        # RuntimeError is not about the argument's type
        if "numpy()" not in str(e):
            raise
        raise TypeError(f"{name} must be array_like of real numbers: {e}") from None


def normalize_axes(axis, ndim, name="axis"):
    """Sorted tuple of non-negative axes; None means all axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (tuple, list)):
        axes = axis
    else:
        axes = (axis,)
    out = []
    for ax in axes:
        try:
            if isinstance(ax, (bool, np.bool_)):   # numpy refuses axis=True too
                raise TypeError
            ax = operator.index(ax)
        except TypeError:
            raise TypeError(
                f"{name} must be None, an int or a tuple of ints, got {axis!r}") from None
        if ndim == 0 and ax in (0, -1):
            continue        # a 0-d array's one "axis", as numpy's reductions allow
        if not -ndim <= ax < ndim:
            raise AxisError(ax, ndim, msg_prefix=name)
        out.append(ax % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} contains a repeated axis: {axis!r}")
    return tuple(sorted(out))


class Plan:
    """How an array of `shape`, reduced over `axes`, maps to (outer, n, inner).

    When the reduced axes are adjacent the mapping is a free reshape of the
    C-ordered array.  Otherwise the reduced axes are moved to the end
    (`perm`) and the array is copied once.
    """

    def __init__(self, shape, axes, rows=False):
        self.shape = tuple(shape)
        self.axes = axes
        ndim = len(shape)
        if rows and axes and axes != tuple(range(axes[0], ndim)):
            # the caller needs contiguous rows (inner == 1): move the axes last
            keep = [i for i in range(ndim) if i not in axes]
            self.perm = tuple(keep) + tuple(axes)
            self.outer = math.prod(shape[i] for i in keep)
            self.n = math.prod(shape[i] for i in axes)
            self.inner = 1
        elif not axes:
            # reduction over no axis: each element is its own slice
            self.perm = None
            self.outer, self.n, self.inner = math.prod(shape), 1, 1
        elif axes == tuple(range(axes[0], axes[-1] + 1)):
            self.perm = None
            self.outer = math.prod(shape[:axes[0]])
            self.n = math.prod(shape[axes[0]:axes[-1] + 1])
            self.inner = math.prod(shape[axes[-1] + 1:])
        else:
            keep = [i for i in range(ndim) if i not in axes]
            self.perm = tuple(keep) + tuple(axes)
            self.outer = math.prod(shape[i] for i in keep)
            self.n = math.prod(shape[i] for i in axes)
            self.inner = 1
        self.size = self.outer * self.n * self.inner
        self.reduced_shape = tuple(1 if i in axes else s for i, s in enumerate(shape))

    def blocks(self, a, dtype):
        """`a` (of self.shape) as a C-contiguous (outer, n, inner) array of dtype."""
        if self.perm is not None:
            a = a.transpose(self.perm)
        a = np.ascontiguousarray(a, dtype=dtype)
        return a.reshape(self.outer, self.n, self.inner)

    def unblock(self, b):
        """Inverse of blocks() for an output of the input's shape."""
        if self.perm is None:
            return b.reshape(self.shape)
        tshape = tuple(self.shape[i] for i in self.perm)
        return b.reshape(tshape).transpose(np.argsort(self.perm))


def check_out(out, shape, dtype, name="out"):
    """Validate a user-supplied output array."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if isinstance(out, np.matrix):      # always 2-d: the kernels' views of it fail
        raise TypeError(f"{name} must be a numpy.ndarray, got numpy.matrix (pass "
                        f"np.asarray({name}), a view of the same memory)")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable, got a read-only array")
    return out


def check_eps(eps, name="eps"):
    # a 0-d real array (np.array(1e-3), what a reduction returns) is a number;
    # a bool is not one (eps=True is a mistake, not 1.0)
    if isinstance(eps, np.ndarray) and eps.ndim == 0 and eps.dtype.kind in "iuf":
        eps = eps[()]
    if not isinstance(eps, numbers.Real) or isinstance(eps, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got {type(eps).__name__} {eps!r}")
    eps = float(eps)
    if not eps >= 0 or math.isinf(eps):
        raise ValueError(f"{name} must be a finite number >= 0, got {eps!r}")
    return eps


def check_same_shape(a, b, name_a, name_b):
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")


def dtype_eps(dtype):
    """The rounding unit of values made in `dtype` (float64 for integers)."""
    return float(np.finfo(dtype if np.dtype(dtype).kind == "f" else np.float64).eps)


def regularise_hint(name, d, dtype, M=None):
    """How to fix a matrix that is not (numerically) positive definite: a
    ridge well above the rounding of `dtype` at dimension d (1e-9 would be
    lost in a float32 matrix), rounded up to a power of 10.  Given the
    matrix M, the ridge also lifts its smallest eigenvalue above zero (twice
    over); where that would take a ridge of the size of M's mean eigenvalue
    or more, no ridge is proposed: M is far from positive definite, not
    something to regularise (an eigenvalue of -1 against 3 is not fixed by
    1e-13 I)."""
    lam = 10.0 ** np.ceil(np.log10(100 * max(d, 1) * dtype_eps(dtype)))
    if M is not None and M.size:
        Md = np.asarray(M, dtype=np.float64)
        low = float(np.linalg.eigvalsh(Md).min())
        mean = float(np.trace(Md)) / Md.shape[0]
        if mean > 0 and low < 0:
            lam = max(lam, 10.0 ** np.ceil(np.log10(-2 * low / mean)))
        if mean <= 0 or lam >= 1:
            return (f"it is far from it (smallest eigenvalue {low:.3g}, mean eigenvalue "
                    f"{mean:.3g}): no small ridge fixes that; check how {name} was made")
    return (f"regularise it, e.g. {name} + {lam:.0e} * trace({name}) / d * I, or use a "
            "shrinkage estimator such as sklearn.covariance.LedoitWolf")


def real_array(x, name):
    """x as an array of real numbers (bool, int or float of any width, its
    own dtype kept), refusing complex, strings and objects with a TypeError
    that names it -- np.asarray(x, float) would drop an imaginary part with
    only a warning.  For parameters (w, VI), which the caller converts."""
    a = as_array(x, name)
    if a.dtype.kind not in "biuf":
        result_dtype((a, name))         # raises, naming the argument
    return a


# Largest asymmetry |M - M^T| accepted as rounding, relative to max |M|:
# np.linalg.inv(cov) leaves ~cond(cov) eps (2e-10 at cond 1e8), which must
# pass; a matrix that is not symmetric at all (a factor, a random matrix)
# is off by O(1).
SYMMETRY_RTOL = 1e-6


def symmetric_part(M, name):
    """(M + M^T) / 2 in float64, after checking that M is symmetric but for
    rounding: within SYMMETRY_RTOL of its largest entry (or 64 eps of its
    dtype, if coarser).  Averaging computes with the symmetric part, as a
    quadratic form x^T M x does (scipy's), whichever triangle a factorization
    then reads.  M must be finite and square."""
    Md = np.asarray(M, dtype=np.float64)
    tol = max(SYMMETRY_RTOL, 64 * dtype_eps(M.dtype))
    scale = np.abs(Md).max(initial=0.0)
    asym = np.abs(Md - Md.T).max(initial=0.0)
    if asym > tol * scale:
        raise ValueError(f"{name} must be symmetric: |{name} - {name}.T| reaches {asym:.3g}, "
                         f"{asym / scale:.3g} of its largest entry (rounding up to "
                         f"{tol:.0e} of it is accepted and averaged out)")
    return (Md + Md.T) * 0.5
