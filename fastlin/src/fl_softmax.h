/* Softmax, log_softmax and logsumexp kernels, float64 and float32. */
#ifndef FL_SOFTMAX_H
#define FL_SOFTMAX_H
#include "fl_common.h"

#define FL_TEMPLATE "fl_softmax_tpl.h"
#include "fl_instantiate.h"

#endif
