/*
 * arch_llama.c - LLaMA and the models that share its graph (Llama 2 and 3,
 * Mistral, CodeLlama, TinyLlama, DeepSeek-Coder 1.x...).
 *
 * The shared core is exactly this architecture.  Attention biases are
 * optional, as in llama.cpp: a few converted models carry them.
 */
#include "internal.h"

const nbi_arch nbi_arch_llama = {
    .name = "llama",
    .rope = NBI_ROPE_NORM,
    .block = {
        [NBI_BT_ATTN_NORM] = NBI_REQUIRED,
        [NBI_BT_ATTN_Q] = NBI_REQUIRED,
        [NBI_BT_ATTN_K] = NBI_REQUIRED,
        [NBI_BT_ATTN_V] = NBI_REQUIRED,
        [NBI_BT_ATTN_OUT] = NBI_REQUIRED,
        [NBI_BT_ATTN_Q_BIAS] = NBI_OPTIONAL,
        [NBI_BT_ATTN_K_BIAS] = NBI_OPTIONAL,
        [NBI_BT_ATTN_V_BIAS] = NBI_OPTIONAL,
        [NBI_BT_ATTN_OUT_BIAS] = NBI_OPTIONAL,
        [NBI_BT_FFN_NORM] = NBI_REQUIRED,
        [NBI_BT_FFN_GATE] = NBI_REQUIRED,
        [NBI_BT_FFN_UP] = NBI_REQUIRED,
        [NBI_BT_FFN_DOWN] = NBI_REQUIRED,
    },
};
