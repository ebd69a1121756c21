"""The one path from validated arrays to a kernel call and back."""
import numpy as np

from . import _memory
from ._threads import _for_work

# Outputs at least this large are written with non-temporal stores
# (src/fl_stream.h): far beyond the caches, where the read-for-ownership of
# each line would otherwise double the memory traffic of a write-bound kernel.
STREAM_BYTES = 1 << 24
from ._validation import (Plan, as_array, check_out, check_same_shape,
                          normalize_axes, result_dtype)


def run_same_shape(kernel, inputs, dtype, plan, out, *extra):
    """Run `kernel(*blocks, result_blocks, *extra, n_threads)` for an op whose
    output has the inputs' shape, honouring `out=`.

    The kernel writes a C-contiguous (outer, n, inner) buffer.  That buffer is
    `out` itself when `out` is C-contiguous, needs no transpose and shares no
    memory with what the kernel reads; otherwise a temporary, copied into
    `out` at the end (so an `out` overlapping an input is still correct).
    """
    shape = plan.shape
    if out is not None:
        check_out(out, shape, dtype)
    if plan.size == 0:
        return out if out is not None else np.empty(shape, dtype)
    blocks = [plan.blocks(a, dtype) for a in inputs]
    direct = (out is not None and plan.perm is None and out.flags.c_contiguous
              and not any(np.may_share_memory(out, b) for b in blocks))
    if direct:
        res = out.reshape(plan.outer, plan.n, plan.inner)
    else:
        res = _memory.empty((plan.outer, plan.n, plan.inner), dtype)[0]
    kernel(*blocks, res, *extra, _for_work(plan.size))
    if direct:
        return out
    full = plan.unblock(res)
    if out is not None:
        np.copyto(out, full)
        return out
    # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
    return full if full.flags.c_contiguous else full.copy(order="C")


def scalar_if_0d(r):
    """numpy's convention (and scipy's): a 0-d result comes back as a scalar."""
    return r[()] if isinstance(r, np.ndarray) and r.ndim == 0 else r


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _rows(arrays, axis):
    """(outer, n) when every array is a C-contiguous, non-empty float32 or
    float64 ndarray of the first one's dtype and shape and `axis` (an int or
    None) reduces its last axis or all of it (a free reshape, to
    (outer, n, 1)); None otherwise, for the general path (Plan).  Small
    calls spend more in Plan's generality than in the kernel."""
    x = arrays[0]
    if type(x) is not np.ndarray:
        return None
    dt, shape = x.dtype, x.shape
    for a in arrays:
        if (type(a) is not np.ndarray or a.dtype != dt
                or a.shape != shape or not a.flags.c_contiguous):
            return None
    if dt not in _FLOATS or not x.size:
        return None
    nd = len(shape)
    if axis is None:
        return (1, x.size) if nd else None
    if type(axis) is not int or nd == 0 or axis not in (-1, nd - 1):
        return None
    return x.size // shape[-1], shape[-1]


def _run_rows(kernel, arrays, rows, extra, out=None):
    """The kernel on the (outer, n, 1) views, into `out` (from _rows_into) or
    a new array of their shape."""
    outer, n = rows
    x = arrays[0]
    res = _memory.empty(x.shape, x.dtype)[0] if out is None else out
    kernel(*[a.reshape(outer, n, 1) for a in arrays], res.reshape(outer, n, 1), *extra,
           _for_work(x.size))
    return res


def _rows_into(arrays, out, axis):
    """_rows of the inputs when `out` can take the kernel's result as it is:
    a writeable ndarray of their dtype, shape and layout that shares no
    memory with them (else None: the general path checks `out` and copies
    through a buffer where it overlaps an input)."""
    if type(out) is not np.ndarray or not out.flags.writeable:
        return None
    rows = _rows(arrays + (out,), axis)
    if rows is None or any(np.may_share_memory(out, a) for a in arrays):
        return None
    return rows


def forward_same_shape(kernel, x, axis, out, *extra):
    """A forward op whose output has the shape of `x`: validate, run, return."""
    rows = _rows((x,), axis) if out is None else _rows_into((x,), out, axis)
    if rows is not None:
        return _run_rows(kernel, (x,), rows, extra, out)
    x = as_array(x, "x")
    dtype = result_dtype((x, "x"))
    plan = Plan(x.shape, normalize_axes(axis, x.ndim))
    r = run_same_shape(kernel, [x], dtype, plan, out, *extra)
    return r if out is not None else scalar_if_0d(r)


def backward_same_shape(kernel, grad, saved, saved_name, axis, *extra, out=None):
    """A backward op taking (grad, saved forward array) of one shape; `out`
    as the forwards' (run_same_shape)."""
    rows = (_rows((saved, grad), axis) if out is None
            else _rows_into((saved, grad), out, axis))
    if rows is not None:
        return _run_rows(kernel, (grad, saved), rows, extra, out)
    grad = as_array(grad, "grad")
    saved = as_array(saved, saved_name)
    check_same_shape(grad, saved, "grad", saved_name)
    dtype = result_dtype((grad, "grad"), (saved, saved_name))
    plan = Plan(saved.shape, normalize_axes(axis, saved.ndim))
    r = run_same_shape(kernel, [grad, saved], dtype, plan, out, *extra)
    return r if out is not None else scalar_if_0d(r)


def store_out(results, out, names):
    """Return a backward's results, or write them into the caller's `out`.

    `results` is one array or a tuple of them, freshly made (so an `out`
    overlapping an input is still right); `out` is None, one array, or a
    tuple of one array per result.  Every array of `out` is checked (type,
    shape, dtype, writeable) before any is written: a bad one leaves all of
    them as they were.
    """
    if out is None:
        return results
    single = not isinstance(results, tuple)
    res = (results,) if single else results
    if single:
        outs, labels = (out,), ("out",)
    else:
        if not isinstance(out, tuple) or len(out) != len(res):
            got = (f"a tuple of {len(out)}" if isinstance(out, tuple)
                   else type(out).__name__)
            raise TypeError(f"out must be a tuple of {len(res)} arrays "
                            f"({', '.join(names)}), got {got}")
        outs = out
        labels = tuple(f"out[{i}] ({n})" for i, n in enumerate(names))
    for o, r, label in zip(outs, res, labels):
        r = np.asarray(r)
        check_out(o, r.shape, r.dtype, name=label)
    for o, r in zip(outs, res):
        np.copyto(o, r)
    return out
