/*
 * basic_avx2.c - AVX2/FMA/F16C kernels for the float types, the 32-element
 * block types and the activation quantizers (x86-64, chosen at run time).
 * Every kernel computes the same bits as its reference in <type>_ref.c.
 */
#include "kernels.h"

void nbi_avx2_add_basic(nbi_kernels *k)
{
    (void)k; /* nothing accelerated yet: the reference entries stay */
}
