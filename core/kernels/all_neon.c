/*
 * all_neon.c - the NEON kernel table (aarch64).  Every kernel computes the
 * same bits as its reference; neon.h explains how the x86 arithmetic the
 * references describe maps onto 128-bit registers.
 *
 * NEON itself is part of the aarch64 baseline.  The dot-product extension
 * (SDOT, Armv8.2 and optional before 8.4) is not, so the quantized dot
 * products come in two builds of the same source and the kernel reads the
 * CPU's capabilities (HWCAP_ASIMDDP) to pick one; the table's level then
 * reads "neon+dotprod".  NIBBLE_KERNELS=neon asks for the plain NEON
 * kernels on such a CPU (so that both variants can be tested on one).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>

#include "neon.h"

/* Linux's arm64 <asm/hwcap.h> value, in case the C library's headers
 * predate it. */
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif

static int want_dotprod(void)
{
    const char *env = getenv("NIBBLE_KERNELS");
    if (env && strcmp(env, "neon") == 0)
        return 0;
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
}

void nbi_neon_add_all(nbi_kernels *k)
{
    nbi_neon_add_float(k);
    nbi_neon_add_act(k);
    if (want_dotprod()) {
        k->level = "neon+dotprod";
        nbi_neon_add_qdot_dotprod(k);
    } else {
        nbi_neon_add_qdot(k);
    }
}
