"""Max-margin (hinge ranking) loss kernels, forward and backward.

loss[r, j] = max(0, (neg[r, j] - pos[r]) + margin) over rows r of (rows, N),
the margin added last (src/fl_margin_tpl.h says why); margin in the dtype.

* 'sum' / 'mean': one fused pass per row, nothing stored but one double per
  row; the row sums are then added in row order (fixed, so the total does
  not depend on the thread count).
* 'none': the (rows, N) matrix of losses.
* backward: gneg = grad * [v > 0] and gpos = -sum_j gneg, one pass.
"""
from cython cimport floating
from cython.parallel cimport prange

cdef extern from "fl_margin.h" nogil:
    double fl_margin_row_sum_d(const double *neg, Py_ssize_t n, double p, double m)
    double fl_margin_row_sum_f(const float *neg, Py_ssize_t n, float p, float m)
    void fl_margin_row_d(const double *neg, double *out, Py_ssize_t n, double p, double m)
    void fl_margin_row_f(const float *neg, float *out, Py_ssize_t n, float p, float m)
    double fl_margin_row_bwd_d(const double *neg, const double *g, Py_ssize_t gstride,
                               double *gneg, Py_ssize_t n, double p, double m)
    double fl_margin_row_bwd_f(const float *neg, const float *g, Py_ssize_t gstride,
                               float *gneg, Py_ssize_t n, float p, float m)


def margin_sum(const floating[::1] pos, const floating[:, ::1] neg, double margin,
               double[::1] rowsum, int n_threads):
    """rowsum[r] = sum_j max(0, (neg[r, j] - pos[r]) + margin); returns their sum."""
    cdef Py_ssize_t rows = neg.shape[0], n = neg.shape[1], r
    cdef double total = 0
    for r in prange(rows, nogil=True, schedule='static', num_threads=n_threads):
        if floating is double:
            rowsum[r] = fl_margin_row_sum_d(&neg[r, 0], n, pos[r], margin)
        else:
            rowsum[r] = fl_margin_row_sum_f(&neg[r, 0], n, pos[r], <float>margin)
    for r in range(rows):
        total += rowsum[r]
    return total


def margin_none(const floating[::1] pos, const floating[:, ::1] neg, double margin,
                floating[:, ::1] out, int n_threads):
    cdef Py_ssize_t rows = neg.shape[0], n = neg.shape[1], r
    for r in prange(rows, nogil=True, schedule='static', num_threads=n_threads):
        if floating is double:
            fl_margin_row_d(&neg[r, 0], &out[r, 0], n, pos[r], margin)
        else:
            fl_margin_row_f(&neg[r, 0], &out[r, 0], n, pos[r], <float>margin)


def margin_bwd(const floating[::1] pos, const floating[:, ::1] neg, double margin,
               const floating[:, :] grad, floating[::1] gpos, floating[:, ::1] gneg,
               int n_threads):
    """grad: (rows, N), or a (1, 1) view of one scalar broadcast to all."""
    cdef Py_ssize_t rows = neg.shape[0], n = neg.shape[1], r, gs, gr
    gs = 0 if grad.shape[1] == 1 and n > 1 else 1
    gr = 0 if grad.shape[0] == 1 and rows > 1 else 1
    if gs == 1 and grad.strides[1] != sizeof(floating):
        raise ValueError("grad rows must be contiguous")
    for r in prange(rows, nogil=True, schedule='static', num_threads=n_threads):
        if floating is double:
            gpos[r] = fl_margin_row_bwd_d(&neg[r, 0], &grad[r * gr, 0], gs, &gneg[r, 0], n,
                                          pos[r], margin)
        else:
            gpos[r] = fl_margin_row_bwd_f(&neg[r, 0], &grad[r * gr, 0], gs, &gneg[r, 0], n,
                                          pos[r], <float>margin)
