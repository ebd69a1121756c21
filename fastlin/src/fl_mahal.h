/* Mahalanobis distance kernels, float64 and float32. */
#ifndef FL_MAHAL_H
#define FL_MAHAL_H
#include "fl_common.h"
#include "fl_transpose.h"

#define FL_TEMPLATE "fl_mahal_tpl.h"
#include "fl_instantiate.h"

#endif
