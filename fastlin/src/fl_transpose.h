/*
 * fl_transpose.h -- square register transposes of vectors of 2, 4, 8 or 16
 * lanes, shared by the Mahalanobis kernels (rows of X into
 * lanes) and the GEMM's transposing pack.
 *
 * v[0..N) (rows) := their transpose (columns): log2(N) stages of N
 * two-source shuffles, stage st swapping the off-diagonal st x st blocks of
 * each pair (v[i], v[i + st]).  With a = v[i] (indices 0..N-1) and b =
 * v[i + st] (N..2N-1): new v[i][l] = l & st ? b[l - st] : a[l] and new
 * v[i + st][l] = l & st ? b[l] : a[l + st].  VT is the vector type.
 */
#ifndef FL_TRANSPOSE_H
#define FL_TRANSPOSE_H
#include "fl_common.h"

/* MX, MY: the index lists of the two shuffles, parenthesized */
#define FL_TR_STAGE(VT, N, v, st, MX, MY)                                             \
    for (int fl_i_ = 0; fl_i_ < (N); fl_i_++)                                             \
        if (!(fl_i_ & (st))) {                                                            \
            VT fl_a_ = (v)[fl_i_], fl_b_ = (v)[fl_i_ + (st)];                             \
            (v)[fl_i_] = FL_SHUFFLE(fl_a_, fl_b_, FL_UNPAREN MX);                     \
            (v)[fl_i_ + (st)] = FL_SHUFFLE(fl_a_, fl_b_, FL_UNPAREN MY);              \
        }

#define FL_TRANSPOSE2(VT, v) do { FL_TR_STAGE(VT, 2, v, 1, (0, 2), (1, 3)) } while (0)

#define FL_TRANSPOSE4(VT, v)                                                          \
    do {                                                                                  \
        FL_TR_STAGE(VT, 4, v, 1, (0, 4, 2, 6), (1, 5, 3, 7))                              \
        FL_TR_STAGE(VT, 4, v, 2, (0, 1, 4, 5), (2, 3, 6, 7))                              \
    } while (0)

#define FL_TRANSPOSE8(VT, v)                                                          \
    do {                                                                                  \
        FL_TR_STAGE(VT, 8, v, 1, (0, 8, 2, 10, 4, 12, 6, 14), (1, 9, 3, 11, 5, 13, 7, 15)) \
        FL_TR_STAGE(VT, 8, v, 2, (0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)) \
        FL_TR_STAGE(VT, 8, v, 4, (0, 1, 2, 3, 8, 9, 10, 11), (4, 5, 6, 7, 12, 13, 14, 15)) \
    } while (0)

#define FL_TRANSPOSE16(VT, v)                                                         \
    do {                                                                                  \
        FL_TR_STAGE(VT, 16, v, 1,                                                     \
                    (0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),          \
                    (1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31))          \
        FL_TR_STAGE(VT, 16, v, 2,                                                     \
                    (0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),           \
                    (2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31))         \
        FL_TR_STAGE(VT, 16, v, 4,                                                     \
                    (0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),           \
                    (4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31))         \
        FL_TR_STAGE(VT, 16, v, 8,                                                     \
                    (0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),             \
                    (8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))       \
    } while (0)

#endif /* FL_TRANSPOSE_H */
