/* Softmax, log_softmax and logsumexp kernels, float64 and float32. */
#ifndef FL_SOFTMAX_H
#define FL_SOFTMAX_H
#include "fl_common.h"

#define T double
#define FL(name) name##_d
#define FL_EXP fl_exp_d
#include "fl_softmax_tpl.h"
#undef T
#undef FL
#undef FL_EXP

#define T float
#define FL(name) name##_f
#define FL_EXP fl_exp_f
#include "fl_softmax_tpl.h"
#undef T
#undef FL
#undef FL_EXP

#endif
