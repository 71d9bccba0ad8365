/*
 * kquant_avx2.c - AVX2/FMA kernels for the K-quants (x86-64, chosen at run
 * time).  Every kernel computes the same bits as its reference.
 */
#include "kernels.h"

void nbi_avx2_add_kquants(nbi_kernels *k)
{
    (void)k; /* nothing accelerated yet: the reference entries stay */
}
