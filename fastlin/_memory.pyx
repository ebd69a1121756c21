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
reused only for a request of at least 3/4 of its size (less 2 MiB for a
block of 4 MiB or more: a small array does not pin a huge block).  Blocks of
4 MiB and more are aligned to 2 MiB and may be backed by huge pages; smaller
ones are whole 4 KiB pages, so that many medium arrays kept alive cost no
more than their size.  When a block must go, the oldest kept one
goes first.  Blocks in use belong to their arrays; only freed ones are kept.
Arrays made here do not own their data (their base chain ends at the block,
through a uint8 array and a memoryview), which is how the block learns that
it is free again; ``arr.resize()`` in place therefore refuses, as for a view.

Only buffers of at least ``MIN_BYTES`` (256 KiB) come from here; smaller
ones are ``np.empty``.  The line is glibc's: from 128 KiB up, a freed chunk
at the heap's top is given back (the heap trimmed) and the next call's
buffer faults its pages in again.  A medium call -- cdist of 512 x 64
points, a 2 MiB result and 2 MiB of tiles -- then spent more time in page
faults from both threads than in the kernel: 2.4 ms at 2 threads against
1.2 at one, 0.72 with its buffers from here.  Kernels take their scratch
from here too.

Kept memory goes back to the OS once unused: a block kept for ``DECAY_SECONDS``
(10 s, as jemalloc's default ``dirty_decay_ms``) without being reused is
unmapped by a daemon thread, which runs only while fastlin has blocks in use
or kept, so a process that stops calling fastlin gets its memory back.
Blocks are their own ``mmap`` mappings (not heap memory that ``free`` may
keep), so unmapping one returns it at once.

The bookkeeping is under its own lock, not the GIL (free-threaded CPython
has none; a block may be freed on any thread).  A forked child starts with
an empty cache: the kept blocks are unmapped there, and the blocks of the
arrays it inherited return to the child's own cache when freed.
"""
import os
import threading

import numpy as np
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock,
                               PyThread_acquire_lock, PyThread_release_lock,
                               PyThread_free_lock, WAIT_LOCK)


cdef extern from *:
    """
    #if defined(_WIN32)
    #include <windows.h>
    static double fl_now(void) { return (double)GetTickCount64() / 1000.0; }
    #else
    #include <time.h>
    static double fl_now(void)
    {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
    }
    #endif
    #if defined(_WIN32)
    #include <malloc.h>
    static void *fl_block_alloc(size_t align, size_t n) { return _aligned_malloc(n, align); }
    static void fl_block_free(void *p, size_t n) { (void)n; _aligned_free(p); }
    #else
    #include <stdint.h>
    #include <sys/mman.h>
    #ifndef MAP_ANONYMOUS
    #define MAP_ANONYMOUS MAP_ANON
    #endif
    /* A mapping of its own, aligned to `align` (a power of two, a multiple of
       the page size): unmapping it returns the memory to the OS at once,
       which free() of heap memory need not do. */
    static void *fl_block_alloc(size_t align, size_t n)
    {
        if (n > SIZE_MAX - align)
            return NULL;
        char *raw = (char *)mmap(NULL, n + align, PROT_READ | PROT_WRITE,
                                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == (char *)MAP_FAILED)
            return NULL;
        char *p = (char *)(((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1));
        if (p > raw)
            munmap(raw, (size_t)(p - raw));
        if (p + n < raw + n + align)
            munmap(p + n, (size_t)(raw + n + align - (p + n)));
    #ifdef MADV_HUGEPAGE
        /* as numpy does for its large arrays; not for page-aligned smaller
           blocks, where a huge page would make a 256 KiB array cost 2 MiB */
        if (align >= ((size_t)1 << 21))
            madvise(p, n, MADV_HUGEPAGE);
    #endif
        return p;
    }
    static void fl_block_free(void *p, size_t n) { munmap(p, n); }
    #endif
    """
    void *fl_block_alloc(size_t align, size_t n) nogil
    void fl_block_free(void *p, size_t n) nogil
    double fl_now() nogil

# Requests below this size are np.empty, and above _MAX_REQUEST too (no
# size arithmetic near the top of size_t).
MIN_BYTES = 1 << 18
_MAX_REQUEST = 1 << 52
# A kept block unused this long goes back to the OS.
DECAY_SECONDS = 10.0
cdef enum:
    _MAX_KEPT = 16      # a backward pass alone frees six buffers per call
    _ALIGN = 1 << 21       # a huge page: blocks can be backed by 2 MiB pages
    _HUGE_MIN = 1 << 22    # blocks from this size up are huge-page aligned
    _PAGE = 1 << 12        # smaller ones are whole 4 KiB pages

# Kept blocks, oldest first.
cdef void *_kept_ptr[_MAX_KEPT]
cdef size_t _kept_size[_MAX_KEPT]
cdef double _kept_since[_MAX_KEPT]
cdef int _n_kept = 0
cdef size_t _kept_bytes = 0
cdef size_t _limit = 1 << 30
cdef Py_ssize_t _n_live = 0       # blocks handed out, not yet given back
cdef double _decay = DECAY_SECONDS
cdef bint _trimmer_running = False

# Guards every variable above.  Held only around plain C (no Python call,
# no allocation, no unmapping), so taking it with the GIL held cannot
# deadlock.
cdef PyThread_type_lock _lock = PyThread_allocate_lock()
if _lock == NULL:
    raise MemoryError("fastlin: cannot allocate the memory cache's lock")


cdef inline void _acquire() noexcept:
    PyThread_acquire_lock(_lock, WAIT_LOCK)


cdef inline void _release() noexcept:
    PyThread_release_lock(_lock)


# Blocks taken out of the cache under the lock, unmapped after it.
cdef struct _Dropped:
    int n
    void *ptr[_MAX_KEPT + 1]
    size_t size[_MAX_KEPT + 1]


cdef void _remove(int i, void **p, size_t *size) noexcept:
    """Take entry i out of the kept list, keeping the others in age order
    (lock held)."""
    global _n_kept, _kept_bytes
    cdef int j
    p[0] = _kept_ptr[i]
    size[0] = _kept_size[i]
    _kept_bytes -= _kept_size[i]
    _n_kept -= 1
    for j in range(i, _n_kept):
        _kept_ptr[j] = _kept_ptr[j + 1]
        _kept_size[j] = _kept_size[j + 1]
        _kept_since[j] = _kept_since[j + 1]


cdef void _drop_oldest(_Dropped *d) noexcept:
    _remove(0, &d.ptr[d.n], &d.size[d.n])
    d.n += 1


cdef void _free_dropped(_Dropped *d) noexcept:
    cdef int i
    for i in range(d.n):
        fl_block_free(d.ptr[i], d.size[i])
    d.n = 0


cdef void _give_back(void *p, size_t size) noexcept:
    """A block's array was freed: keep the block, oldest out first, or free it."""
    global _n_kept, _kept_bytes, _n_live
    cdef _Dropped d
    d.n = 0
    _acquire()
    _n_live -= 1
    if size > _limit:
        d.ptr[0] = p
        d.size[0] = size
        d.n = 1
    else:
        while _n_kept > 0 and (_n_kept == _MAX_KEPT or _kept_bytes + size > _limit):
            _drop_oldest(&d)
        _kept_ptr[_n_kept] = p
        _kept_size[_n_kept] = size
        _kept_since[_n_kept] = fl_now()
        _n_kept += 1
        _kept_bytes += size
    _release()
    _free_dropped(&d)


cdef inline size_t _slack(size_t nbytes) noexcept:
    # a huge-page block rounds its request up by up to 2 MiB; a page-rounded
    # one by under 4 KiB
    return _ALIGN if nbytes >= _HUGE_MIN else 0


cdef void *_take(size_t nbytes, size_t *size, bint *fresh) noexcept:
    """The smallest kept block of nbytes to 4/3 nbytes, else a new one (NULL
    when out of memory)."""
    global _n_live
    cdef int i, best = -1
    cdef void *p = NULL
    cdef size_t align
    _acquire()
    for i in range(_n_kept):
        if (_kept_size[i] >= nbytes and 3 * _kept_size[i] <= 4 * nbytes + 3 * _slack(nbytes)
                and (best < 0 or _kept_size[i] < _kept_size[best])):
            best = i
    if best >= 0:
        _remove(best, &p, size)
        _n_live += 1
        _release()
        fresh[0] = False
        return p
    _release()
    align = _ALIGN if nbytes >= _HUGE_MIN else _PAGE
    size[0] = (nbytes + align - 1) // align * align
    p = fl_block_alloc(align, size[0])
    fresh[0] = True
    if p != NULL:
        _acquire()
        _n_live += 1
        _release()
    return p


cdef double _trim_expired() noexcept:
    """Unmap the blocks kept longer than the decay time.  Returns the seconds
    until the next one expires, or -1 when nothing is kept or in use (the
    trimmer then stops; the next large result starts it again)."""
    global _trimmer_running
    cdef _Dropped d
    cdef double now = fl_now(), wait
    d.n = 0
    _acquire()
    while _n_kept > 0 and now - _kept_since[0] >= _decay:
        _drop_oldest(&d)
    if _n_kept > 0:
        wait = _decay - (now - _kept_since[0])
    elif _n_live > 0:
        wait = _decay
    else:
        wait = -1.0
        _trimmer_running = False
    _release()
    _free_dropped(&d)
    return wait


_wake = threading.Event()     # set: the trimmer looks again at once


def _trimmer():
    while True:
        wait = _trim_expired()
        if wait < 0:
            return
        _wake.wait(wait + 0.01)
        _wake.clear()


def _start_trimmer():
    """Start the thread that returns unused blocks to the OS, unless running."""
    global _trimmer_running
    _acquire()
    running = _trimmer_running
    _trimmer_running = True
    _release()
    if running:
        return
    try:
        threading.Thread(target=_trimmer, name="fastlin-memory-decay", daemon=True).start()
    except RuntimeError:    # pragma: no cover - no new threads (interpreter exiting)
        _acquire()
        _trimmer_running = False
        _release()


def _set_decay(seconds):
    """Set the decay time (seconds); returns the previous one.  For tests."""
    global _decay
    old = _decay
    _decay = float(seconds)
    _wake.set()
    return old


def _after_fork_in_child():
    """The child of a fork has only the forking thread: a fresh lock (the old
    one may have been held by a thread that is not there), no trimmer, and
    no kept blocks; arrays it inherited still give their blocks back."""
    global _lock, _n_kept, _kept_bytes, _trimmer_running
    cdef int i
    _lock = PyThread_allocate_lock()     # the old one is left as it was
    for i in range(_n_kept):
        fl_block_free(_kept_ptr[i], _kept_size[i])
    _n_kept = 0
    _kept_bytes = 0
    _trimmer_running = False
    if _n_live > 0:
        _start_trimmer()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
    if not _trimmer_running:
        _start_trimmer()
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
    Results of at least 256 KiB are carved from blocks that return to this
    cache, not to the OS, when the array is freed, and are reused by the next
    result of about their size: a loop that calls an op and drops its result
    then pays no page faults and no page zeroing (for a 33.5 MB result that
    cost as much as the kernel itself).  The default is 1 GiB, or the
    ``FASTLIN_MEMORY_CACHE`` environment variable (bytes) at import; at most
    16 blocks are kept.  A block unused for 10 s goes back to the OS (a
    daemon thread unmaps it, whether or not fastlin is called again), and
    the child of a fork starts with nothing kept.
    """
    global _limit
    cdef _Dropped d
    cdef size_t old, new
    import operator
    try:
        if isinstance(nbytes, bool):
            raise TypeError
        n = operator.index(nbytes)
    except TypeError:
        raise TypeError(f"nbytes must be an integer, got {type(nbytes).__name__}") from None
    if n < 0:
        raise ValueError(f"nbytes must be >= 0, got {n}")
    new = min(n, _MAX_REQUEST)          # beyond that: no limit in practice
    d.n = 0
    _acquire()
    old = _limit
    _limit = new
    while _n_kept > 0 and _kept_bytes > _limit:
        _drop_oldest(&d)
    _release()
    _free_dropped(&d)
    return old


def get_memory_cache():
    """(limit, bytes kept now, blocks kept now) of the result-buffer cache."""
    cdef size_t limit, kept
    cdef int n
    _acquire()
    limit, kept, n = _limit, _kept_bytes, _n_kept
    _release()
    return limit, kept, n


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
