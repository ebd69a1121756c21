# Work decomposition shared by every reduction kernel.
#
# A reduction is laid out as a C-ordered (outer, n, inner) block reduced over
# n.  With inner == 1 each work item is one contiguous row.  With inner > 1 a
# work item is a tile of `tw` adjacent columns of one n x inner slab: the C
# loops then walk rows of the tile contiguously and vectorize across columns.
# tw is chosen so that one tile (n * tw elements) stays near 256 KiB, i.e.
# in L2 across the 2-3 passes a kernel makes over it.

cdef extern from "fl_common.h":
    int FL_TILE_MAX


cdef inline Py_ssize_t tile_width(Py_ssize_t n, Py_ssize_t inner,
                                  Py_ssize_t itemsize) noexcept nogil:
    if inner == 1:
        return 1
    cdef Py_ssize_t tw = (1 << 18) // (n * itemsize + 1)
    tw = (tw // 16) * 16
    if tw < 16:
        tw = 16
    if tw > FL_TILE_MAX:
        tw = FL_TILE_MAX
    if tw > inner:
        tw = inner
    return tw
