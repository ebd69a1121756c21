/*
 * Instantiate the template named by FL_TEMPLATE (a header of inner loops
 * written in terms of T, VT, VI, VL, ACC, FL(name), FL_EXP, FL_IS_DOUBLE)
 * once for float64 and once for float32.  Included, not guarded: each op
 * header includes it once with its own FL_TEMPLATE.
 */
#define T double
#define VT fl_vd
#define VI fl_vdi
#define VL FL_VL_d
#define ACC acc_t_d
#define FL(name) name##_d
#define FL_EXP fl_exp_d
#define FL_IS_DOUBLE 1
#include FL_TEMPLATE
#undef T
#undef VT
#undef VI
#undef VL
#undef ACC
#undef FL
#undef FL_EXP
#undef FL_IS_DOUBLE

#define T float
#define VT fl_vf
#define VI fl_vfi
#define VL FL_VL_f
#define ACC acc_t_f
#define FL(name) name##_f
#define FL_EXP fl_exp_f
#define FL_IS_DOUBLE 0
#include FL_TEMPLATE
#undef T
#undef VT
#undef VI
#undef VL
#undef ACC
#undef FL
#undef FL_EXP
#undef FL_IS_DOUBLE

#undef FL_TEMPLATE
