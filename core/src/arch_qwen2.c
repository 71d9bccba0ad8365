/*
 * arch_qwen2.c - Qwen2 and Qwen2.5 (Qwen2.5-Coder included): LLaMA's graph
 * with biases on the query, key and value projections and GPT-NeoX's
 * rotary layout, which rotates the two halves of each head's rotary
 * dimensions instead of adjacent pairs.  Hyperparameters come from the
 * qwen2.* keys; the output matrix may be tied to the embedding.
 */
#include "internal.h"

const nbi_arch nbi_arch_qwen2 = {
    .name = "qwen2",
    .rope = NBI_ROPE_NEOX,
    .block = {
        [NBI_BT_ATTN_NORM] = NBI_REQUIRED,
        [NBI_BT_ATTN_Q] = NBI_REQUIRED,
        [NBI_BT_ATTN_K] = NBI_REQUIRED,
        [NBI_BT_ATTN_V] = NBI_REQUIRED,
        [NBI_BT_ATTN_OUT] = NBI_REQUIRED,
        [NBI_BT_ATTN_Q_BIAS] = NBI_REQUIRED,
        [NBI_BT_ATTN_K_BIAS] = NBI_REQUIRED,
        [NBI_BT_ATTN_V_BIAS] = NBI_REQUIRED,
        [NBI_BT_FFN_NORM] = NBI_REQUIRED,
        [NBI_BT_FFN_GATE] = NBI_REQUIRED,
        [NBI_BT_FFN_UP] = NBI_REQUIRED,
        [NBI_BT_FFN_DOWN] = NBI_REQUIRED,
    },
};
