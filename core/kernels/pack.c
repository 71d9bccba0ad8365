/*
 * pack.c - the packed row layout of Q4_0 and IQ4_NL (block_q4_0x8 in
 * kernels.h), and its reference tile.
 *
 * Generating a token streams every weight once, and the x86 kernels work
 * on eight rows at a time (one row per SIMD lane).  Read from the file's
 * layout, that is eight streams side by side plus a transpose of every
 * block; packed, block b of the eight rows is 144 contiguous bytes already
 * in lane order, and a group is one stream.  The model loader packs the
 * matrices whose types the kernel table has a packed tile for
 * (model.c); the values are unchanged, only their places, so every
 * product is the same bits as over the rows as stored.
 */
#include "kernels.h"

int nbi_pack_supported(int t)
{
    return t == NB_TYPE_Q4_0 || t == NB_TYPE_IQ4_NL;
}

/* Both types share the block shape (an F16 scale, 16 code bytes), so one
 * routine moves either. */
static void pack_group(int nb, const uint8_t *src, size_t row, uint8_t *dst)
{
    for (int b = 0; b < nb; b++) {
        block_q4_0x8 *o = (block_q4_0x8 *)(void *)(dst + (size_t)b * sizeof *o);
        for (int i = 0; i < NBI_PACK_ROWS; i++) {
            const uint8_t *blk = src + (size_t)i * row + (size_t)b * sizeof(block_q4_0);
            memcpy(&o->d[i], blk, sizeof o->d[i]);
            for (int k = 0; k < 4; k++)
                memcpy(o->qs + 32 * k + 4 * i, blk + 2 + 4 * k, 4);
        }
    }
}

static void unpack_group(int nb, const uint8_t *src, size_t row, uint8_t *dst)
{
    for (int b = 0; b < nb; b++) {
        const block_q4_0x8 *o = (const block_q4_0x8 *)(const void *)(src + (size_t)b * sizeof *o);
        for (int i = 0; i < NBI_PACK_ROWS; i++) {
            uint8_t *blk = dst + (size_t)i * row + (size_t)b * sizeof(block_q4_0);
            memcpy(blk, &o->d[i], sizeof o->d[i]);
            for (int k = 0; k < 4; k++)
                memcpy(blk + 2 + 4 * k, o->qs + 32 * k + 4 * i, 4);
        }
    }
}

void nbi_pack_rows(int t, int n, int64_t n_rows, const void *restrict src, void *restrict dst)
{
    const size_t row = nbi_row_size(t, n), group = row * NBI_PACK_ROWS;
    for (int64_t g = 0; g < n_rows / NBI_PACK_ROWS; g++)
        pack_group(n / QK4_0, (const uint8_t *)src + (size_t)g * group, row,
                   (uint8_t *)dst + (size_t)g * group);
}

void nbi_unpack_rows(int t, int n, int64_t n_rows, const void *restrict src, void *restrict dst)
{
    const size_t row = nbi_row_size(t, n), group = row * NBI_PACK_ROWS;
    for (int64_t g = 0; g < n_rows / NBI_PACK_ROWS; g++)
        unpack_group(n / QK4_0, (const uint8_t *)src + (size_t)g * group, row,
                     (uint8_t *)dst + (size_t)g * group);
}
