/* Mahalanobis distance kernels, float64 and float32. */
#ifndef FL_MAHAL_H
#define FL_MAHAL_H
#include "fl_common.h"

#define T double
#define VT fl_vd
#define VL FL_VL_d
#define ACC acc_t_d
#define FL(name) name##_d
#include "fl_mahal_tpl.h"
#undef T
#undef VT
#undef VL
#undef ACC
#undef FL

#define T float
#define VT fl_vf
#define VL FL_VL_f
#define ACC acc_t_f
#define FL(name) name##_f
#include "fl_mahal_tpl.h"
#undef T
#undef VT
#undef VL
#undef ACC
#undef FL

#endif
