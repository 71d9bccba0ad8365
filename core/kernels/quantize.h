/*
 * quantize.h - weight quantizers that write the same bytes as llama.cpp.
 *
 * Used to convert F32/F16 weights into a block format (a `quantize` tool,
 * LoRA merging).  Each quantizer follows ggml's own search with the same
 * float operations in the same order, so a file nibble writes is
 * byte-identical to one written by llama.cpp's quantizer without an
 * importance matrix.
 */
#ifndef NIBBLE_QUANTIZE_H
#define NIBBLE_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

/*
 * Quantize nrows rows of n_per_row floats into type `type` exactly as
 * llama.cpp's quantizer does without an importance matrix (ggml's
 * quantize_<type>(src, dst, nrows, n_per_row, NULL)).  Supports F32, F16,
 * BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL.
 * dst receives nrows * nbi_row_size(type, n_per_row) bytes.
 * Returns bytes written, or 0 if the type is unsupported, n_per_row is not a
 * positive multiple of its block size or nrows is negative (nrows == 0
 * writes nothing and returns 0).  Thread-safe (no shared mutable state), so
 * callers may quantize different rows on different threads.
 */
size_t nbi_quantize_rows(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row);

/* 1 when nbi_quantize_rows supports the type, else 0. */
int nbi_quantize_supported(int type);

#endif /* NIBBLE_QUANTIZE_H */
