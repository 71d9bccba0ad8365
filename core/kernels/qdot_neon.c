/*
 * qdot_neon.c - the quantized dot products (qdot_neon.h) for every
 * aarch64 CPU: integer products by widening multiplies (SMULL) and
 * pairwise adds, no dot-product extension.
 */
#define NBI_QDOT_DOTPROD 0
#define NBI_QDOT_ADD nbi_neon_add_qdot
#include "qdot_neon.h"
