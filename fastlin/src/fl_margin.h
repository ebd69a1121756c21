/* Max-margin loss kernels, float64 and float32. */
#ifndef FL_MARGIN_H
#define FL_MARGIN_H
#include "fl_common.h"

#define T double
#define VT fl_vd
#define VI fl_vdi
#define VL FL_VL_d
#define ACC acc_t_d
#define FL(name) name##_d
#include "fl_margin_tpl.h"
#undef T
#undef VT
#undef VI
#undef VL
#undef ACC
#undef FL

#define T float
#define VT fl_vf
#define VI fl_vfi
#define VL FL_VL_f
#define ACC acc_t_f
#define FL(name) name##_f
#include "fl_margin_tpl.h"
#undef T
#undef VT
#undef VI
#undef VL
#undef ACC
#undef FL

#endif
