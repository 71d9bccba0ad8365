/*
 * qdot_dotprod_neon.c - the quantized dot products (qdot_neon.h) with the
 * Armv8.2 dot-product extension: one SDOT sums four byte products per
 * lane.  Compiled with +dotprod (Makefile) and installed only when the
 * CPU reports it (all_neon.c); SDOT's lanes are exactly the four
 * consecutive products the reference's lanes hold, so the results are
 * those of qdot_neon.c.
 */
#define NBI_QDOT_DOTPROD 1
#define NBI_QDOT_ADD nbi_neon_add_qdot_dotprod
#include "qdot_neon.h"
