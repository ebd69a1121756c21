"""Softmax family kernels: softmax, log_softmax, logsumexp and their backward.

Each op is computed on a C-ordered (outer, n, inner) block, reducing over n
(see _tiles.pxd).  Per work item (a row, or a tile of columns):

* softmax:      3 passes -- max; exp(x - max) stored and summed; scale by
                1/sum.  x is read from memory once; the later passes hit cache.
* log_softmax:  3 passes -- max; sum of exp(x - max); (x - max) - log(sum).
* logsumexp:    2 passes -- max; sum of exp over the non-maximal entries, then
                m + log(count of maxima) + log1p(sum / count) (scipy's
                formulation, which keeps digits when one entry dominates).
                A non-finite result is recomputed by the direct formula,
                reproducing scipy's inf/nan/-inf edge cases.
* backward:     2 passes -- one reduction (sum(g*y), sum(g), or the lse),
                then the elementwise product.

Sums are accumulated in double in a fixed lane order, so a result does not
depend on the thread count.  The vectorized exp is in src/fl_common.h.
"""
from cython cimport floating
from cython.parallel cimport prange

from fastlin._tiles cimport tile_width

cdef extern from "fl_softmax.h" nogil:
    void fl_softmax_fwd_d(const double *x, double *y, Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_softmax_fwd_f(const float *x, float *y, Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_log_softmax_fwd_d(const double *x, double *y, Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_log_softmax_fwd_f(const float *x, float *y, Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_logsumexp_fwd_d(const double *x, double *out, Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_logsumexp_fwd_f(const float *x, float *out, Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_logsumexp_w_fwd_d(const double *x, const double *b, double *out, double *sgn,
                              Py_ssize_t n, int return_sign)
    void fl_logsumexp_w_fwd_f(const float *x, const float *b, float *out, float *sgn,
                              Py_ssize_t n, int return_sign)
    void fl_softmax_bwd_d(const double *g, const double *y, double *gx,
                          Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_softmax_bwd_f(const float *g, const float *y, float *gx,
                          Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_log_softmax_bwd_d(const double *g, const double *y, double *gx,
                              Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_log_softmax_bwd_f(const float *g, const float *y, float *gx,
                              Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_logsumexp_bwd_d(const double *gout, const double *x, double *gx,
                            Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_logsumexp_bwd_f(const float *gout, const float *x, float *gx,
                            Py_ssize_t n, Py_ssize_t ld, Py_ssize_t w)
    void fl_logsumexp_w_bwd_d(const double *gout, const double *x, const double *b,
                              double *gx, Py_ssize_t n)
    void fl_logsumexp_w_bwd_f(const float *gout, const float *x, const float *b,
                              float *gx, Py_ssize_t n)


def softmax_fwd(const floating[:, :, ::1] x, floating[:, :, ::1] y, int n_threads):
    cdef Py_ssize_t outer = x.shape[0], n = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t tw = tile_width(inner)
    cdef Py_ssize_t ntile = (inner + tw - 1) // tw
    cdef Py_ssize_t it, o, c0, off
    cdef const floating *px = &x[0, 0, 0]
    cdef floating *py = &y[0, 0, 0]
    for it in prange(outer * ntile, nogil=True, schedule='static', num_threads=n_threads):
        o = it // ntile
        c0 = (it - o * ntile) * tw
        off = o * n * inner + c0
        if floating is double:
            fl_softmax_fwd_d(px + off, py + off, n, inner, min(tw, inner - c0))
        else:
            fl_softmax_fwd_f(px + off, py + off, n, inner, min(tw, inner - c0))


def log_softmax_fwd(const floating[:, :, ::1] x, floating[:, :, ::1] y, int n_threads):
    cdef Py_ssize_t outer = x.shape[0], n = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t tw = tile_width(inner)
    cdef Py_ssize_t ntile = (inner + tw - 1) // tw
    cdef Py_ssize_t it, o, c0, off
    cdef const floating *px = &x[0, 0, 0]
    cdef floating *py = &y[0, 0, 0]
    for it in prange(outer * ntile, nogil=True, schedule='static', num_threads=n_threads):
        o = it // ntile
        c0 = (it - o * ntile) * tw
        off = o * n * inner + c0
        if floating is double:
            fl_log_softmax_fwd_d(px + off, py + off, n, inner, min(tw, inner - c0))
        else:
            fl_log_softmax_fwd_f(px + off, py + off, n, inner, min(tw, inner - c0))


def logsumexp_fwd(const floating[:, :, ::1] x, floating[:, ::1] out, int n_threads):
    """out has shape (outer, inner)."""
    cdef Py_ssize_t outer = x.shape[0], n = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t tw = tile_width(inner)
    cdef Py_ssize_t ntile = (inner + tw - 1) // tw
    cdef Py_ssize_t it, o, c0, off
    cdef const floating *px = &x[0, 0, 0]
    cdef floating *po = &out[0, 0]
    for it in prange(outer * ntile, nogil=True, schedule='static', num_threads=n_threads):
        o = it // ntile
        c0 = (it - o * ntile) * tw
        off = o * n * inner + c0
        if floating is double:
            fl_logsumexp_fwd_d(px + off, po + o * inner + c0, n, inner, min(tw, inner - c0))
        else:
            fl_logsumexp_fwd_f(px + off, po + o * inner + c0, n, inner, min(tw, inner - c0))


def logsumexp_w_fwd(const floating[:, ::1] x, const floating[:, ::1] b,
                    floating[::1] out, floating[::1] sgn, bint return_sign, int n_threads):
    """Weighted rows: x and b are (rows, n); out and sgn are (rows,)."""
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], r
    for r in prange(rows, nogil=True, schedule='static', num_threads=n_threads):
        if floating is double:
            fl_logsumexp_w_fwd_d(&x[r, 0], &b[r, 0], &out[r], &sgn[r], n, return_sign)
        else:
            fl_logsumexp_w_fwd_f(&x[r, 0], &b[r, 0], &out[r], &sgn[r], n, return_sign)


def softmax_bwd(const floating[:, :, ::1] g, const floating[:, :, ::1] y,
                floating[:, :, ::1] gx, int n_threads):
    cdef Py_ssize_t outer = y.shape[0], n = y.shape[1], inner = y.shape[2]
    cdef Py_ssize_t tw = tile_width(inner)
    cdef Py_ssize_t ntile = (inner + tw - 1) // tw
    cdef Py_ssize_t it, o, c0, off
    cdef const floating *pg = &g[0, 0, 0]
    cdef const floating *py = &y[0, 0, 0]
    cdef floating *po = &gx[0, 0, 0]
    for it in prange(outer * ntile, nogil=True, schedule='static', num_threads=n_threads):
        o = it // ntile
        c0 = (it - o * ntile) * tw
        off = o * n * inner + c0
        if floating is double:
            fl_softmax_bwd_d(pg + off, py + off, po + off, n, inner, min(tw, inner - c0))
        else:
            fl_softmax_bwd_f(pg + off, py + off, po + off, n, inner, min(tw, inner - c0))


def log_softmax_bwd(const floating[:, :, ::1] g, const floating[:, :, ::1] y,
                    floating[:, :, ::1] gx, int n_threads):
    cdef Py_ssize_t outer = y.shape[0], n = y.shape[1], inner = y.shape[2]
    cdef Py_ssize_t tw = tile_width(inner)
    cdef Py_ssize_t ntile = (inner + tw - 1) // tw
    cdef Py_ssize_t it, o, c0, off
    cdef const floating *pg = &g[0, 0, 0]
    cdef const floating *py = &y[0, 0, 0]
    cdef floating *po = &gx[0, 0, 0]
    for it in prange(outer * ntile, nogil=True, schedule='static', num_threads=n_threads):
        o = it // ntile
        c0 = (it - o * ntile) * tw
        off = o * n * inner + c0
        if floating is double:
            fl_log_softmax_bwd_d(pg + off, py + off, po + off, n, inner, min(tw, inner - c0))
        else:
            fl_log_softmax_bwd_f(pg + off, py + off, po + off, n, inner, min(tw, inner - c0))


def logsumexp_bwd(const floating[:, ::1] gout, const floating[:, :, ::1] x,
                  floating[:, :, ::1] gx, int n_threads):
    """gout has shape (outer, inner)."""
    cdef Py_ssize_t outer = x.shape[0], n = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t tw = tile_width(inner)
    cdef Py_ssize_t ntile = (inner + tw - 1) // tw
    cdef Py_ssize_t it, o, c0, off
    cdef const floating *pg = &gout[0, 0]
    cdef const floating *px = &x[0, 0, 0]
    cdef floating *po = &gx[0, 0, 0]
    for it in prange(outer * ntile, nogil=True, schedule='static', num_threads=n_threads):
        o = it // ntile
        c0 = (it - o * ntile) * tw
        off = o * n * inner + c0
        if floating is double:
            fl_logsumexp_bwd_d(pg + o * inner + c0, px + off, po + off, n, inner, min(tw, inner - c0))
        else:
            fl_logsumexp_bwd_f(pg + o * inner + c0, px + off, po + off, n, inner, min(tw, inner - c0))


def logsumexp_w_bwd(const floating[::1] gout, const floating[:, ::1] x,
                    const floating[:, ::1] b, floating[:, ::1] gx, int n_threads):
    cdef Py_ssize_t rows = x.shape[0], n = x.shape[1], r
    for r in prange(rows, nogil=True, schedule='static', num_threads=n_threads):
        if floating is double:
            fl_logsumexp_w_bwd_d(&gout[r], &x[r, 0], &b[r, 0], &gx[r, 0], n)
        else:
            fl_logsumexp_w_bwd_f(&gout[r], &x[r, 0], &b[r, 0], &gx[r, 0], n)
