/*
 * cmd_synth.c - `nibble synth`: write a random-weight LLaMA model of a
 * chosen shape, so benchmarks and tests need no download.
 *
 * The weights are deterministic for a seed (each tensor has its own stream,
 * so the file does not depend on write order) and scaled so activations stay
 * in a realistic range: matrices have standard deviation 1/sqrt(inputs),
 * norms are 1.  The vocabulary is copied from another GGUF file or built
 * in: the three SentencePiece specials, the 256 byte tokens, printable
 * ASCII characters and numbered filler pieces up to the requested size.
 */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "tools.h"

static const char synth_usage[] =
    "usage: nibble synth -o OUT [--preset NAME] [options]\n"
    "\n"
    "Write a LLaMA GGUF model with random weights.\n"
    "\n"
    "  -o, --output FILE    the file to write (replaced atomically)\n"
    "  -p, --preset NAME    tiny (default), tinyllama-1.1b or llama-7b\n"
    "      --vocab FILE     take the vocabulary from this GGUF (e.g.\n"
    "                       ggml-vocab-llama-spm.gguf); default: built in\n"
    "      --type TYPE      F32, F16 (default) or BF16 for the weight matrices\n"
    "  -s, --seed S         random seed (default 1); the same seed writes the\n"
    "                       same file\n"
    "  shape overrides:     --embd N --layers N --heads N --kv-heads N --ff N\n"
    "                       --ctx N --n-vocab N (built-in vocabulary only)\n"
    "                       --rope-base F\n"
    "  -h, --help           show this help\n"
    "\n"
    "Presets: tiny = 64 wide, 2 layers, 4 heads (2 KV), FFN 128, 512 tokens;\n"
    "tinyllama-1.1b = 2048, 22 layers, 32 heads (4 KV), FFN 5632, 32000 tokens;\n"
    "llama-7b = 4096, 32 layers, 32 heads, FFN 11008, 32000 tokens.\n";

typedef struct shape {
    const char *name;
    int embd, layers, heads, kv_heads, ff, ctx, n_vocab;
    float rope_base, eps;
} shape;

static const shape presets[] = {
    {"tiny", 64, 2, 4, 2, 128, 256, 512, 10000.0f, 1e-5f},
    {"tinyllama-1.1b", 2048, 22, 32, 4, 5632, 2048, 32000, 10000.0f, 1e-5f},
    {"llama-7b", 4096, 32, 32, 32, 11008, 4096, 32000, 10000.0f, 1e-5f},
};

/* xoshiro256** seeded by splitmix64: a stream per tensor. */
typedef struct rng {
    uint64_t s[4];
} rng;

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ (stream * 0xd1342543de82ef95ull);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix(&x);
}

static uint64_t rng_next(rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3] << 45 | s[3] >> 19;
    return result;
}

/* Uniform in [-1, 1). */
static float rng_unit(rng *r)
{
    return (float)((double)(rng_next(r) >> 40) * (1.0 / 8388608.0) - 1.0);
}

typedef struct synth {
    uint64_t seed;
    int wtype;
    int64_t n_tensors;
    char (*names)[128];
    int *types;
    int64_t (*ne)[4];
    int is_tty;
} synth;

static nb_status fill(void *ctx, int64_t index, void *dst, size_t nbytes, char *err,
                      size_t errlen)
{
    synth *s = ctx;
    const int64_t *ne = s->ne[index];
    int64_t n = ne[0] * ne[1];
    rng r;
    rng_seed(&r, s->seed, (uint64_t)index + 1);
    if (strstr(s->names[index], "_norm")) {
        float *f = dst;
        for (int64_t i = 0; i < n; i++)
            f[i] = 1.0f;
    } else {
        /* uniform with standard deviation 1/sqrt(inputs) */
        float a = sqrtf(3.0f / (float)ne[0]);
        const int chunk = 4096;
        float tmp[4096];
        for (int64_t i = 0; i < n; i += chunk) {
            int k = (int)NBI_MIN((int64_t)chunk, n - i);
            for (int j = 0; j < k; j++)
                tmp[j] = a * rng_unit(&r);
            switch (s->types[index]) {
            case NB_TYPE_F32: memcpy((float *)dst + i, tmp, (size_t)k * 4); break;
            case NB_TYPE_F16:
                for (int j = 0; j < k; j++)
                    ((nb_fp16 *)dst)[i + j] = nbi_fp32_to_fp16(tmp[j]);
                break;
            default:
                for (int j = 0; j < k; j++)
                    ((nb_bf16 *)dst)[i + j] = nbi_fp32_to_bf16(tmp[j]);
            }
        }
    }
    if (s->is_tty)
        fprintf(stderr, "\rnibble synth: %" PRId64 "/%" PRId64 " tensors", index + 1, s->n_tensors);
    (void)nbytes, (void)err, (void)errlen;
    return NB_OK;
}

static nb_status add_builtin_vocab(nbi_gw *w, int n_vocab)
{
    char **text = calloc((size_t)n_vocab, sizeof *text);
    float *score = calloc((size_t)n_vocab, sizeof *score);
    int32_t *type = calloc((size_t)n_vocab, sizeof *type);
    nb_status st = NB_ERR_NOMEM;
    if (!text || !score || !type)
        goto done;
    static const char *specials[] = {"<unk>", "<s>", "</s>"};
    int k = 0;
    for (; k < 3; k++) {
        text[k] = strdup(specials[k]);
        type[k] = k == 0 ? NBI_TOK_UNKNOWN : NBI_TOK_CONTROL;
    }
    for (int b = 0; b < 256; b++, k++) {
        text[k] = malloc(8);
        if (text[k])
            snprintf(text[k], 8, "<0x%02X>", b);
        type[k] = NBI_TOK_BYTE;
    }
    /* "▁" then printable ASCII, then filler pieces; scores favour earlier ones */
    for (int c = 32; c < 127 && k < n_vocab; c++, k++) {
        text[k] = strdup(c == 32 ? "\xe2\x96\x81" : (char[]){(char)c, 0});
        type[k] = NBI_TOK_NORMAL;
        score[k] = -(float)(k - 259);
    }
    for (; k < n_vocab; k++) {
        text[k] = malloc(24);
        if (text[k])
            snprintf(text[k], 24, "\xe2\x96\x81tok%d", k);
        type[k] = NBI_TOK_NORMAL;
        score[k] = -(float)(k - 259);
    }
    for (int i = 0; i < n_vocab; i++)
        if (!text[i])
            goto done;
    if ((st = nbi_gw_str(w, "tokenizer.ggml.model", "llama")) ||
        (st = nbi_gw_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)text, NULL,
                             (uint64_t)n_vocab)) ||
        (st = nbi_gw_arr(w, "tokenizer.ggml.scores", NB_GGUF_FLOAT32, score, (uint64_t)n_vocab)) ||
        (st = nbi_gw_arr(w, "tokenizer.ggml.token_type", NB_GGUF_INT32, type, (uint64_t)n_vocab)) ||
        (st = nbi_gw_u32(w, "tokenizer.ggml.unknown_token_id", 0)) ||
        (st = nbi_gw_u32(w, "tokenizer.ggml.bos_token_id", 1)) ||
        (st = nbi_gw_u32(w, "tokenizer.ggml.eos_token_id", 2)))
        goto done;
done:
    if (text)
        for (int i = 0; i < n_vocab; i++)
            free(text[i]);
    free(text);
    free(score);
    free(type);
    return st;
}

/* The tensors of one block: name pattern ("blk.%d.attn_q.weight") and
 * shape; ne1 == 1 marks a norm vector, the rest are the matrices. */
typedef struct layer_tensor {
    const char *fmt;
    int64_t ne0, ne1;
} layer_tensor;

#define N_LAYER_TENSORS 9

static void layer_tensors(const shape *sh, layer_tensor t[N_LAYER_TENSORS])
{
    const int64_t E = sh->embd, KV = (int64_t)sh->kv_heads * (sh->embd / sh->heads), F = sh->ff;
    const layer_tensor all[N_LAYER_TENSORS] = {
        {"blk.%d.attn_norm.weight", E, 1},   {"blk.%d.attn_q.weight", E, E},
        {"blk.%d.attn_k.weight", E, KV},     {"blk.%d.attn_v.weight", E, KV},
        {"blk.%d.attn_output.weight", E, E}, {"blk.%d.ffn_norm.weight", E, 1},
        {"blk.%d.ffn_gate.weight", E, F},    {"blk.%d.ffn_up.weight", E, F},
        {"blk.%d.ffn_down.weight", F, E}};
    memcpy(t, all, sizeof all);
}

/* Describe tensor s->n_tensors (name, ne0 x ne1, type; 1-D when ne1 is 1)
 * to w and count it; -1 after a message. */
static int add_tensor(nbi_gw *w, synth *s, const char *name, int64_t ne0, int64_t ne1, int type)
{
    const int64_t k = s->n_tensors;
    snprintf(s->names[k], sizeof s->names[k], "%s", name);
    s->ne[k][0] = ne0;
    s->ne[k][1] = ne1;
    s->ne[k][2] = s->ne[k][3] = 1;
    s->types[k] = type;
    if (nbi_gw_tensor(w, s->names[k], type, ne1 == 1 ? 1 : 2, s->ne[k])) {
        tool_error("cannot describe tensor %s", s->names[k]);
        return -1;
    }
    s->n_tensors++;
    return 0;
}

/* Room for n tensors in s; -1 after a message. */
static int alloc_tensors(synth *s, int64_t n)
{
    s->names = calloc((size_t)n, sizeof *s->names);
    s->types = calloc((size_t)n, sizeof *s->types);
    s->ne = calloc((size_t)n, sizeof *s->ne);
    if (!s->names || !s->types || !s->ne) {
        tool_error("out of memory");
        return -1;
    }
    return 0;
}

static void free_tensors(synth *s)
{
    free(s->names);
    free(s->types);
    free(s->ne);
}

/* --lora-rank: an adapter for the model of shape sh, with a lora_a
 * (n_in, rank) and lora_b (rank, n_out) pair for each matrix of each layer,
 * filled like the model's matrices (standard deviation 1/sqrt(inputs)). */
static int synth_lora(const char *out, const shape *sh, int wtype, int rank, uint64_t seed)
{
    int rc = EXIT_ERR;
    nbi_gw *w = NULL;
    layer_tensor lt[N_LAYER_TENSORS];
    layer_tensors(sh, lt);
    synth s = {seed, wtype, 0, NULL, NULL, NULL, isatty(2)};
    char name[160];
    if (alloc_tensors(&s, 2 * N_LAYER_TENSORS * (int64_t)sh->layers))
        goto done;
    if (nbi_gw_new(&w)) {
        tool_error("out of memory");
        goto done;
    }
    snprintf(name, sizeof name, "nibble synth %s LoRA rank %d", sh->name, rank);
    if (nbi_gw_str(w, "general.architecture", "llama") || nbi_gw_str(w, "general.name", name) ||
        nbi_gw_str(w, "general.type", "adapter") || nbi_gw_str(w, "adapter.type", "lora") ||
        nbi_gw_f32(w, "adapter.lora.alpha", (float)rank)) {
        tool_error("out of memory");
        goto done;
    }
    for (int l = 0; l < sh->layers; l++)
        for (int j = 0; j < N_LAYER_TENSORS; j++) {
            if (lt[j].ne1 == 1)
                continue; /* norms are not adapted */
            char base[128];
            snprintf(base, sizeof base, lt[j].fmt, l);
            snprintf(name, sizeof name, "%s.lora_a", base);
            if (add_tensor(w, &s, name, lt[j].ne0, rank, wtype))
                goto done;
            snprintf(name, sizeof name, "%s.lora_b", base);
            if (add_tensor(w, &s, name, rank, lt[j].ne1, wtype))
                goto done;
        }
    rc = tool_write_gguf(w, out, fill, &s, s.is_tty);
done:
    free_tensors(&s);
    nbi_gw_free(w);
    return rc;
}

enum { OPT_VOCAB = 256, OPT_TYPE, OPT_EMBD, OPT_LAYERS, OPT_HEADS, OPT_KV, OPT_FF, OPT_CTX,
       OPT_NVOCAB, OPT_ROPE, OPT_LORA_RANK };

int cmd_synth(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, 0, 'o'}, {"preset", required_argument, 0, 'p'},
        {"vocab", required_argument, 0, OPT_VOCAB}, {"type", required_argument, 0, OPT_TYPE},
        {"seed", required_argument, 0, 's'},   {"embd", required_argument, 0, OPT_EMBD},
        {"layers", required_argument, 0, OPT_LAYERS}, {"heads", required_argument, 0, OPT_HEADS},
        {"kv-heads", required_argument, 0, OPT_KV}, {"ff", required_argument, 0, OPT_FF},
        {"ctx", required_argument, 0, OPT_CTX}, {"n-vocab", required_argument, 0, OPT_NVOCAB},
        {"rope-base", required_argument, 0, OPT_ROPE}, {"help", no_argument, 0, 'h'},
        {"lora-rank", required_argument, 0, OPT_LORA_RANK},
        {0, 0, 0, 0}};
    const char *out = NULL, *vocab = NULL, *type_name = "F16";
    shape sh = presets[0];
    unsigned long long seed = 1;
    long v;
    double dv;
    int c, n_vocab_given = 0, lora_rank = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:p:s:h", opts, NULL)) != -1) {
        int *dim = NULL;
        long lo = 1, hi = 1 << 20;
        switch (c) {
        case 'o': out = optarg; break;
        case 'p': {
            size_t i;
            for (i = 0; i < sizeof presets / sizeof presets[0]; i++)
                if (!strcmp(optarg, presets[i].name))
                    break;
            if (i == sizeof presets / sizeof presets[0])
                return tool_usage_error("synth", "unknown preset '%s' (tiny, tinyllama-1.1b, llama-7b)",
                                        optarg);
            sh = presets[i];
            break;
        }
        case OPT_VOCAB: vocab = optarg; break;
        case OPT_TYPE: type_name = optarg; break;
        case 's':
            if (parse_u64(optarg, &seed))
                return tool_usage_error("synth", "--seed wants a non-negative integer, not '%s'", optarg);
            break;
        case OPT_EMBD: dim = &sh.embd; hi = 65536; break;
        case OPT_LAYERS: dim = &sh.layers; hi = 1024; break;
        case OPT_HEADS: dim = &sh.heads; hi = 1024; break;
        case OPT_KV: dim = &sh.kv_heads; hi = 1024; break;
        case OPT_FF: dim = &sh.ff; break;
        case OPT_CTX: dim = &sh.ctx; hi = 1 << 24; break;
        case OPT_NVOCAB: dim = &sh.n_vocab; lo = 259; hi = 1 << 20; n_vocab_given = 1; break;
        case OPT_LORA_RANK: dim = &lora_rank; hi = 4096; break;
        case OPT_ROPE:
            if (parse_float(optarg, 1, 1e9, &dv))
                return tool_usage_error("synth", "--rope-base wants a number >= 1, not '%s'", optarg);
            sh.rope_base = (float)dv;
            break;
        case 'h': fputs(synth_usage, stdout); return EXIT_OK;
        default: return tool_usage_error("synth", "unknown option");
        }
        if (dim) {
            if (parse_int(optarg, lo, hi, &v))
                return tool_usage_error("synth", "%s wants an integer %ld..%ld, not '%s'",
                                        argv[optind - 1], lo, hi, optarg);
            *dim = (int)v;
        }
    }
    if (optind < argc)
        return tool_usage_error("synth", "unexpected argument '%s'", argv[optind]);
    if (!out)
        return tool_usage_error("synth", "give the output file with -o");
    int wtype = !strcmp(type_name, "F32") ? NB_TYPE_F32
                : !strcmp(type_name, "F16") ? NB_TYPE_F16
                : !strcmp(type_name, "BF16") ? NB_TYPE_BF16
                                              : -1;
    if (wtype < 0)
        return tool_usage_error("synth", "--type must be F32, F16 or BF16, not '%s'", type_name);
    if (sh.embd % sh.heads || sh.heads % sh.kv_heads || (sh.embd / sh.heads) % 2)
        return tool_usage_error("synth", "embedding %d, %d heads and %d KV heads do not fit "
                                "(heads must divide the embedding into even head sizes, and KV "
                                "heads must divide heads)",
                                sh.embd, sh.heads, sh.kv_heads);
    if (vocab && n_vocab_given)
        return tool_usage_error("synth", "--n-vocab applies to the built-in vocabulary only");
    if (lora_rank && vocab)
        return tool_usage_error("synth", "an adapter (--lora-rank) has no vocabulary");
    if (lora_rank)
        return synth_lora(out, &sh, wtype, lora_rank, seed);

    int rc = EXIT_ERR;
    nbi_gw *w = NULL;
    nb_gguf *vg = NULL;
    synth s = {seed, wtype, 0, NULL, NULL, NULL, isatty(2)};
    char err[512];
    if (nbi_gw_new(&w))
        return tool_error("out of memory");
    nb_status st;
    if (vocab) {
        if ((st = nb_gguf_open(vocab, &vg, err, sizeof err))) {
            tool_error("%s: %s", vocab, err);
            goto done;
        }
        const char *model;
        size_t ml;
        const nbi_kv *toks;
        if (nbi_gguf_get_str(vg, "tokenizer.ggml.model", &model, &ml, NULL, err, sizeof err) ||
            ml != 5 || memcmp(model, "llama", 5) ||
            nbi_gguf_get_array(vg, "tokenizer.ggml.tokens", NB_GGUF_STRING, &toks, NULL, err,
                               sizeof err)) {
            tool_error("%s: not a SentencePiece ('llama') vocabulary", vocab);
            goto done;
        }
        sh.n_vocab = (int)toks->n;
        for (int64_t i = 0; i < nb_gguf_n_kv(vg); i++)
            if (!strncmp(nb_gguf_key(vg, i), "tokenizer.", 10) &&
                (st = nbi_gw_copy(w, vg, nb_gguf_key(vg, i)))) {
                tool_error("out of memory");
                goto done;
            }
    } else if (add_builtin_vocab(w, sh.n_vocab)) {
        tool_error("out of memory");
        goto done;
    }
    char name[128];
    snprintf(name, sizeof name, "nibble synth %s", sh.name);
    int head_dim = sh.embd / sh.heads;
    if (nbi_gw_str(w, "general.architecture", "llama") || nbi_gw_str(w, "general.name", name) ||
        nbi_gw_u32(w, "general.file_type", wtype == NB_TYPE_F32 ? 0 : wtype == NB_TYPE_F16 ? 1 : 32) ||
        nbi_gw_u32(w, "llama.context_length", (uint32_t)sh.ctx) ||
        nbi_gw_u32(w, "llama.embedding_length", (uint32_t)sh.embd) ||
        nbi_gw_u32(w, "llama.block_count", (uint32_t)sh.layers) ||
        nbi_gw_u32(w, "llama.feed_forward_length", (uint32_t)sh.ff) ||
        nbi_gw_u32(w, "llama.attention.head_count", (uint32_t)sh.heads) ||
        nbi_gw_u32(w, "llama.attention.head_count_kv", (uint32_t)sh.kv_heads) ||
        nbi_gw_u32(w, "llama.rope.dimension_count", (uint32_t)head_dim) ||
        nbi_gw_f32(w, "llama.rope.freq_base", sh.rope_base) ||
        nbi_gw_f32(w, "llama.attention.layer_norm_rms_epsilon", sh.eps)) {
        tool_error("out of memory");
        goto done;
    }

    /* tensors: 2 + 9 per layer + 1 */
    if (alloc_tensors(&s, 3 + N_LAYER_TENSORS * (int64_t)sh.layers))
        goto done;
    layer_tensor lt[N_LAYER_TENSORS];
    layer_tensors(&sh, lt);
    const int64_t E = sh.embd, V = sh.n_vocab;
    if (add_tensor(w, &s, "token_embd.weight", E, V, wtype))
        goto done;
    for (int l = 0; l < sh.layers; l++)
        for (int j = 0; j < N_LAYER_TENSORS; j++) {
            snprintf(name, sizeof name, lt[j].fmt, l);
            if (add_tensor(w, &s, name, lt[j].ne0, lt[j].ne1,
                           lt[j].ne1 == 1 ? NB_TYPE_F32 : wtype))
                goto done;
        }
    if (add_tensor(w, &s, "output_norm.weight", E, 1, NB_TYPE_F32) ||
        add_tensor(w, &s, "output.weight", E, V, wtype))
        goto done;
    rc = tool_write_gguf(w, out, fill, &s, s.is_tty);
done:
    free_tensors(&s);
    nb_gguf_close(vg);
    nbi_gw_free(w);
    return rc;
}
