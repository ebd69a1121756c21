/* Max-margin loss kernels, float64 and float32. */
#ifndef FL_MARGIN_H
#define FL_MARGIN_H
#include "fl_common.h"

#define FL_TEMPLATE "fl_margin_tpl.h"
#include "fl_instantiate.h"

#endif
