/* Softmax, log_softmax and logsumexp kernels, float64 and float32. */
#ifndef FL_SOFTMAX_H
#define FL_SOFTMAX_H
#include "fl_common.h"

#define T double
#define VT fl_vd
#define VI fl_vdi
#define VL FL_VL_d
#define ACC acc_t_d
#define FL(name) name##_d
#define FL_EXP fl_exp_d
#include "fl_softmax_tpl.h"
#undef T
#undef VT
#undef VI
#undef VL
#undef ACC
#undef FL
#undef FL_EXP

#define T float
#define VT fl_vf
#define VI fl_vfi
#define VL FL_VL_f
#define ACC acc_t_f
#define FL(name) name##_f
#define FL_EXP fl_exp_f
#include "fl_softmax_tpl.h"
#undef T
#undef VT
#undef VI
#undef VL
#undef ACC
#undef FL
#undef FL_EXP

#endif
