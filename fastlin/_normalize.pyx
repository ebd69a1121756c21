"""Row L2 normalization kernels: y = x / max(||x||_2, eps) and its backward.

Per work item (a row, or a tile of columns; see _tiles.pxd):

* forward:  2 passes -- sum of squares in double (a scaled second pass only
            for float64 rows whose sum over/underflows), then x * (1/d).
* backward: 3 passes -- norm; g . y with y formed on the fly; the output.

The branch structure at the singular points (zero rows, the eps clamp) is
documented in src/fl_normalize_tpl.h and in fastlin.normalize_backward.
"""
from cython cimport floating
from cython.parallel cimport prange

from fastlin._tiles cimport tile_width

cdef extern from "fl_normalize.h" nogil:
    void fl_normalize_fwd_d(const double *x, double *y, Py_ssize_t n, Py_ssize_t ld,
                            Py_ssize_t w, double eps)
    void fl_normalize_fwd_f(const float *x, float *y, Py_ssize_t n, Py_ssize_t ld,
                            Py_ssize_t w, double eps)
    void fl_normalize_bwd_d(const double *g, const double *x, double *gx, Py_ssize_t n,
                            Py_ssize_t ld, Py_ssize_t w, double eps)
    void fl_normalize_bwd_f(const float *g, const float *x, float *gx, Py_ssize_t n,
                            Py_ssize_t ld, Py_ssize_t w, double eps)


def normalize_fwd(const floating[:, :, ::1] x, floating[:, :, ::1] y, double eps,
                  int n_threads):
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
            fl_normalize_fwd_d(px + off, py + off, n, inner, min(tw, inner - c0), eps)
        else:
            fl_normalize_fwd_f(px + off, py + off, n, inner, min(tw, inner - c0), eps)


def normalize_bwd(const floating[:, :, ::1] g, const floating[:, :, ::1] x,
                  floating[:, :, ::1] gx, double eps, int n_threads):
    cdef Py_ssize_t outer = x.shape[0], n = x.shape[1], inner = x.shape[2]
    cdef Py_ssize_t tw = tile_width(inner)
    cdef Py_ssize_t ntile = (inner + tw - 1) // tw
    cdef Py_ssize_t it, o, c0, off
    cdef const floating *pg = &g[0, 0, 0]
    cdef const floating *px = &x[0, 0, 0]
    cdef floating *po = &gx[0, 0, 0]
    for it in prange(outer * ntile, nogil=True, schedule='static', num_threads=n_threads):
        o = it // ntile
        c0 = (it - o * ntile) * tw
        off = o * n * inner + c0
        if floating is double:
            fl_normalize_bwd_d(pg + off, px + off, po + off, n, inner, min(tw, inner - c0), eps)
        else:
            fl_normalize_bwd_f(pg + off, px + off, po + off, n, inner, min(tw, inner - c0), eps)
