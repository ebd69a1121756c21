"""Large result buffers, recycled.

Why: a fresh array of more than 32 MiB is a fresh ``mmap`` (glibc's largest
threshold), so every call that returns one pays the kernel for faulting and
zeroing every page before a single result is written: measured here, 2.8 ms
of a 33.5 MB max_margin_loss_backward whose kernel takes 2.7 ms, and 55 of
the 105 ms of an 800 MB cdist (10000 x 3 points).  A pipeline that calls an
op in a loop frees each result before it asks for the next one, so fastlin
keeps the blocks its own large results were made of once they are freed
(the array's memory returns here instead of to the OS) and hands them out
again: no fault, no zeroing, the pages already mapped.

The blocks kept are bounded: at most ``_MAX_KEPT`` (16) of them and, together, at
most the cache limit (``set_memory_cache``; 1 GiB by default, or the
``FASTLIN_MEMORY_CACHE`` environment variable, in bytes, read at import).
A limit of 0 frees every kept block and turns the cache off.  A block is
reused only for a request of at least 3/4 of its size, less 2 MiB (a small
array does not pin a huge block).  When a block must go, the oldest kept one
goes first.  Blocks in use belong to their arrays; only freed ones are kept.
Arrays made here do not own their data (their base chain ends at the block,
through a uint8 array and a memoryview), which is how the block learns that
it is free again; ``arr.resize()`` in place therefore refuses, as for a view.

Only buffers of at least ``MIN_BYTES`` come from here; smaller ones are
``np.empty`` (glibc reuses freed memory of that size by itself).
"""
import os

import numpy as np


cdef extern from *:
    """
    #if defined(_WIN32)
    #include <malloc.h>
    static void *fl_block_alloc(size_t align, size_t n) { return _aligned_malloc(n, align); }
    static void fl_block_free(void *p) { _aligned_free(p); }
    #else
    #include <stdlib.h>
    #include <sys/mman.h>
    static void *fl_block_alloc(size_t align, size_t n)
    {
        void *p = NULL;
        if (posix_memalign(&p, align, n) != 0)
            return NULL;
    #ifdef MADV_HUGEPAGE
        madvise(p, n, MADV_HUGEPAGE);    /* as numpy does for its large arrays */
    #endif
        return p;
    }
    static void fl_block_free(void *p) { free(p); }
    #endif
    """
    void *fl_block_alloc(size_t align, size_t n) nogil
    void fl_block_free(void *p) nogil

# Requests below this size are np.empty, and above _MAX_REQUEST too (no
# size arithmetic near the top of size_t).
MIN_BYTES = 1 << 22
_MAX_REQUEST = 1 << 52
cdef enum:
    _MAX_KEPT = 16      # a backward pass alone frees six buffers per call
    _ALIGN = 1 << 21       # a huge page: blocks can be backed by 2 MiB pages

cdef void *_kept_ptr[_MAX_KEPT]
cdef size_t _kept_size[_MAX_KEPT]
cdef int _n_kept = 0
cdef size_t _kept_bytes = 0
cdef size_t _limit = 1 << 30

# All of the bookkeeping below runs with the GIL held (allocation from the
# wrappers, release from __dealloc__), which serialises it.


cdef void *_remove(int i) noexcept:
    """Take entry i out of the kept list, keeping the others in age order
    (oldest first); returns its block."""
    global _n_kept, _kept_bytes
    cdef void *p = _kept_ptr[i]
    cdef int j
    _kept_bytes -= _kept_size[i]
    _n_kept -= 1
    for j in range(i, _n_kept):
        _kept_ptr[j] = _kept_ptr[j + 1]
        _kept_size[j] = _kept_size[j + 1]
    return p


cdef void _evict(int i) noexcept:
    fl_block_free(_remove(i))


cdef void _give_back(void *p, size_t size) noexcept:
    """A block's array was freed: keep the block, oldest out first, or free it."""
    global _n_kept, _kept_bytes
    if size > _limit:
        fl_block_free(p)
        return
    while _n_kept > 0 and (_n_kept == _MAX_KEPT or _kept_bytes + size > _limit):
        _evict(0)
    _kept_ptr[_n_kept] = p
    _kept_size[_n_kept] = size
    _n_kept += 1
    _kept_bytes += size


cdef void *_take(size_t nbytes, size_t *size, bint *fresh) noexcept:
    """The smallest kept block of nbytes to 4/3 nbytes, else a new one (NULL
    when out of memory)."""
    global _n_kept, _kept_bytes
    cdef int i, best = -1
    cdef void *p = NULL
    for i in range(_n_kept):
        if (_kept_size[i] >= nbytes and 3 * _kept_size[i] <= 4 * nbytes + 3 * _ALIGN
                and (best < 0 or _kept_size[i] < _kept_size[best])):
            best = i
    if best >= 0:
        size[0] = _kept_size[best]
        fresh[0] = False
        return _remove(best)
    size[0] = (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
    p = fl_block_alloc(_ALIGN, size[0])
    fresh[0] = True
    return p


cdef class _Block:
    """A block of memory exposed as a writable byte buffer; back to the cache
    when the last array using it is freed."""
    cdef void *ptr
    cdef size_t size          # the block's bytes
    cdef Py_ssize_t nbytes    # the bytes the array sees
    cdef Py_ssize_t shape0
    cdef Py_ssize_t stride0
    cdef readonly bint fresh  # True: new pages, never written

    def __getbuffer__(self, Py_buffer *buf, int flags):
        self.shape0 = self.nbytes
        self.stride0 = 1
        buf.buf = self.ptr
        buf.obj = self
        buf.len = self.nbytes
        buf.readonly = 0
        buf.itemsize = 1
        buf.format = b"B"
        buf.ndim = 1
        buf.shape = &self.shape0
        buf.strides = &self.stride0
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    def __dealloc__(self):
        if self.ptr != NULL:
            _give_back(self.ptr, self.size)
            self.ptr = NULL


def empty(shape, dtype):
    """np.empty(shape, dtype) for fastlin's results; large ones come from the
    cache of freed blocks.  Returns (array, fresh): fresh is False when the
    memory was reused (its pages are mapped already: nothing to pre-fault)."""
    dtype = np.dtype(dtype)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    count = 1
    for s in shape:
        count *= s
    nbytes = count * dtype.itemsize
    if nbytes < MIN_BYTES or _limit == 0 or nbytes > _MAX_REQUEST:
        # (np.empty also gives its own errors for negative or absurd sizes)
        return np.empty(shape, dtype), True
    cdef size_t size = 0
    cdef bint fresh = True
    cdef _Block b = _Block.__new__(_Block)     # first: nothing to leak if this fails
    cdef void *p = _take(nbytes, &size, &fresh)
    if p == NULL:
        raise MemoryError(f"fastlin: cannot allocate {nbytes} bytes")
    b.ptr = p
    b.size = size
    b.nbytes = nbytes
    b.fresh = fresh
    return np.frombuffer(b, np.uint8).view(dtype).reshape(shape), fresh


def set_memory_cache(nbytes):
    """Set how many bytes of freed result buffers fastlin keeps for reuse.

    Parameters
    ----------
    nbytes : int
        The limit, at least 0.  0 frees every kept buffer and turns the cache
        off (every large result then comes from the OS, as ``np.empty``).

    Returns
    -------
    int
        The previous limit.

    Notes
    -----
    Results of at least 4 MiB are carved from blocks that return to this
    cache, not to the OS, when the array is freed, and are reused by the next
    result of about their size: a loop that calls an op and drops its result
    then pays no page faults and no page zeroing (for a 33.5 MB result that
    cost as much as the kernel itself).  The default is 1 GiB, or the
    ``FASTLIN_MEMORY_CACHE`` environment variable (bytes) at import; at most
    16 blocks are kept.
    """
    global _limit
    import operator
    try:
        if isinstance(nbytes, bool):
            raise TypeError
        n = operator.index(nbytes)
    except TypeError:
        raise TypeError(f"nbytes must be an integer, got {type(nbytes).__name__}") from None
    if n < 0:
        raise ValueError(f"nbytes must be >= 0, got {n}")
    old = _limit
    _limit = min(n, _MAX_REQUEST)       # beyond that: no limit in practice
    while _n_kept > 0 and _kept_bytes > _limit:
        _evict(0)
    return old


def get_memory_cache():
    """(limit, bytes kept now, blocks kept now) of the result-buffer cache."""
    return _limit, _kept_bytes, _n_kept


def _init_from_env():
    v = os.environ.get("FASTLIN_MEMORY_CACHE", "").strip()
    if v:
        try:
            set_memory_cache(int(v))
        except (TypeError, ValueError):
            import warnings
            warnings.warn(f"fastlin: ignoring FASTLIN_MEMORY_CACHE={v!r} "
                          "(expected a number of bytes >= 0)")


_init_from_env()
