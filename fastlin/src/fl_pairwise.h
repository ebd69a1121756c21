/* Pairwise reductions over distance tiles (cdist_logsumexp), float64 and
   float32. */
#ifndef FL_PAIRWISE_H
#define FL_PAIRWISE_H
#include "fl_common.h"

#define FL_TEMPLATE "fl_pairwise_tpl.h"
#include "fl_instantiate.h"

#endif
