# Work decomposition shared by every reduction kernel.
#
# A reduction is laid out as a C-ordered (outer, n, inner) block reduced over
# n.  With inner == 1 each work item is one contiguous row.  With inner > 1 a
# work item is a tile of `tw` adjacent columns of one n x inner slab: the C
# loops then walk rows of the tile contiguously and vectorize across columns.
# tw is the widest tile the C loops accept (FL_TILE_MAX columns): wide row
# segments keep the hardware prefetcher streaming (measured on 4096 x 4096:
# 16 columns 3.5x slower than 512), and columns are independent, so the
# width changes no result.

cdef extern from "fl_common.h":
    int FL_TILE_MAX


cdef inline Py_ssize_t tile_width(Py_ssize_t inner) noexcept nogil:
    if inner <= FL_TILE_MAX:
        return inner
    return FL_TILE_MAX
