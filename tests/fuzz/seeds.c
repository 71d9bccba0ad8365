/*
 * seeds.c - writes the generated seed inputs of the fuzz targets:
 * fuzz-seeds OUTDIR makes OUTDIR/<target>/<name> for each target.
 *
 * Everything is made here (gguf_builder models and vocabularies, adapters
 * for fuzz_lora's base model, hand-written texts, protocol lines,
 * templates and argument vectors); nothing comes from outside the
 * repository.  The committed corpus (tests/fuzz/corpus/) started from
 * these, grown by fuzzing and minimised with -merge=1.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static const char *outdir;

static void put(const char *target, const char *name, const void *data, size_t len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", outdir, target);
    if (mkdir(path, 0755) && errno != EEXIST) {
        perror(path);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/%s/%s", outdir, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len || fclose(f)) {
        perror(path);
        exit(1);
    }
}

static void put_str(const char *target, const char *name, const char *s)
{
    put(target, name, s, strlen(s));
}

/* A flag or selector byte, then text. */
static void put_text(const char *target, const char *name, uint8_t first, const char *s)
{
    size_t n = strlen(s);
    uint8_t *buf = malloc(n + 1);
    buf[0] = first;
    memcpy(buf + 1, s, n);
    put(target, name, buf, n + 1);
    free(buf);
}

static void put_built(const char *target, const char *name, gguf_builder *b)
{
    size_t len;
    uint8_t *img = gb_build(b, &len);
    if (!img) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    put(target, name, img, len);
    free(img);
    gb_free(b);
}

static gguf_builder *llama(int dim, int n_layer, int n_head, int n_head_kv, int n_ff, uint32_t w,
                           const char *arch, int bias)
{
    gb_llama_params p = gb_llama_default_params();
    p.dim = dim, p.n_layer = n_layer, p.n_head = n_head, p.n_head_kv = n_head_kv, p.n_ff = n_ff;
    p.wtype = w, p.arch = arch, p.attn_bias = bias;
    return gb_llama_new(&p);
}

/* The same model with a 16-token vocabulary (<unk> <s> </s> and 13
 * pieces; no byte tokens), so that the embedding and output matrices, and
 * the file, stay small: small inputs fuzz faster and keep the corpus small. */
static gguf_builder *small_vocab(gguf_builder *b, int dim)
{
    static const char *const toks[16] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "e", "t",
                                         "a", "\xe2\x96\x81t", "he", "\xe2\x96\x81the", "in",
                                         "o", "n", "s", "<|im_end|>", "<0x41>"};
    static const int32_t types[16] = {2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 6};
    float scores[16];
    for (int i = 0; i < 16; i++)
        scores[i] = -(float)i;
    static const char *const keys[] = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                       "tokenizer.ggml.token_type"};
    for (size_t i = 0; i < 3; i++)
        gb_kv_remove(b, keys[i]);
    gb_kv_arr_str(b, "tokenizer.ggml.tokens", toks, 16);
    gb_kv_arr(b, "tokenizer.ggml.scores", GB_FLOAT32, scores, 16);
    gb_kv_arr(b, "tokenizer.ggml.token_type", GB_INT32, types, 16);
    uint32_t type = b->tensor[gb_tensor_find(b, "token_embd.weight")].type;
    gb_tensor_remove(b, "token_embd.weight");
    gb_tensor_remove(b, "output.weight");
    uint64_t dims[2] = {(uint64_t)dim, 16};
    gb_tensor_add(b, "token_embd.weight", 2, dims, type, NULL, GB_AUTO);
    gb_tensor_add(b, "output.weight", 2, dims, type, NULL, GB_AUTO);
    return b;
}

static void gguf_seeds(const char *t)
{
    put_built(t, "small-f16", small_vocab(llama(8, 1, 2, 1, 16, GB_F16, NULL, 0), 8));
    put_built(t, "small-qwen2-f32", small_vocab(llama(8, 1, 2, 1, 8, GB_F32, "qwen2", 1), 8));
    put_built(t, "small-q8_0", small_vocab(llama(32, 1, 4, 1, 32, GB_Q8_0, NULL, 0), 32));
    put_built(t, "llama-f16", llama(8, 1, 2, 1, 16, GB_F16, NULL, 0));
    put_built(t, "llama-f32", llama(8, 2, 2, 2, 16, GB_F32, NULL, 0));
    put_built(t, "qwen2-bias", llama(8, 1, 2, 1, 16, GB_F16, "qwen2", 1));
    put_built(t, "llama-q8_0", llama(32, 1, 4, 2, 32, GB_Q8_0, NULL, 0));
    gguf_builder *b = llama(8, 1, 2, 1, 16, GB_BF16, NULL, 0);
    gb_kv_str(b, "tokenizer.chat_template", "{% for m in messages %}<|im_start|>{% endfor %}");
    gb_kv_u32(b, "general.alignment", 64);
    b->align = 64;
    put_built(t, "llama-bf16-aligned", b);
    b = gb_new();
    gb_kv_str(b, "general.architecture", "llama");
    gb_llama_add_vocab(b);
    put_built(t, "vocab-spm", b);
    b = llama(8, 1, 2, 1, 16, GB_F16, NULL, 0);
    b->version = 2;
    put_built(t, "llama-v2", b);
    /* one of every metadata type */
    b = gb_new();
    gb_kv_u8(b, "a.u8", 1), gb_kv_i8(b, "a.i8", -1), gb_kv_u16(b, "a.u16", 2);
    gb_kv_i16(b, "a.i16", -2), gb_kv_u32(b, "a.u32", 3), gb_kv_i32(b, "a.i32", -3);
    gb_kv_f32(b, "a.f32", 0.5f), gb_kv_bool(b, "a.bool", 1), gb_kv_u64(b, "a.u64", 4);
    gb_kv_i64(b, "a.i64", -4), gb_kv_f64(b, "a.f64", 0.25), gb_kv_str(b, "a.str", "text");
    static const int32_t ints[] = {1, 2, 3};
    static const char *const strs[] = {"x", "yy", ""};
    gb_kv_arr(b, "a.arr", GB_INT32, ints, 3);
    gb_kv_arr_str(b, "a.arr_str", strs, 3);
    uint64_t dims[2] = {4, 2};
    gb_tensor_add(b, "t", 2, dims, GB_F32, NULL, GB_AUTO);
    put_built(t, "all-types", b);
}

/* What fuzz_lora's base model (gb_llama_new's defaults: dim 32, 2 layers,
 * kv_dim 16, FFN 64) accepts. */
static void lora_seeds(const char *t)
{
    static const struct {
        const char *name, *weight;
        uint64_t n_in, n_out, rank;
        uint32_t type;
        float alpha;
    } cases[] = {
        {"attn_q-f32", "blk.0.attn_q.weight", 32, 32, 4, GB_F32, 8},
        {"attn_k-f16", "blk.1.attn_k.weight", 32, 16, 2, GB_F16, 0},
        {"ffn_down-f32", "blk.0.ffn_down.weight", 64, 32, 8, GB_F32, 16},
        {"output-f16", "output.weight", 32, 300, 4, GB_F16, 4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        gguf_builder *b = gb_new();
        gb_kv_str(b, "general.architecture", "llama");
        gb_kv_str(b, "general.type", "adapter");
        gb_kv_str(b, "adapter.type", "lora");
        gb_kv_f32(b, "adapter.lora.alpha", cases[i].alpha);
        char name[128];
        uint64_t da[2] = {cases[i].n_in, cases[i].rank}, db[2] = {cases[i].rank, cases[i].n_out};
        snprintf(name, sizeof name, "%s.lora_a", cases[i].weight);
        gb_tensor_add(b, name, 2, da, cases[i].type, NULL, GB_AUTO);
        snprintf(name, sizeof name, "%s.lora_b", cases[i].weight);
        gb_tensor_add(b, name, 2, db, cases[i].type, NULL, GB_AUTO);
        if (i == 0) { /* two pairs in one file */
            uint64_t a2[2] = {32, 4}, b2[2] = {4, 32};
            gb_tensor_add(b, "blk.1.attn_output.weight.lora_a", 2, a2, GB_F32, NULL, GB_AUTO);
            gb_tensor_add(b, "blk.1.attn_output.weight.lora_b", 2, b2, GB_F32, NULL, GB_AUTO);
        }
        put_built(t, cases[i].name, b);
    }
}

static void text_seeds(void)
{
    static const char *const texts[] = {
        "Hello world",
        " the quick brown fox jumps over the lazy dog.\n\nAnd then  two  spaces",
        "</s> <s> <unk> text",
        "caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x98\x80 \xd0\x9f\xd1\x80\xd0\xb8",
        "I'm can't we'll 12345 3.14159 x=y+1; // comment\n\tint main(void) {}",
        "\xff\xfe invalid \xc3 bytes \xed\xa0\x80 \xf4\x90\x80\x80",
        "\xe2\x96\x81 already spaced",
        "<|endoftext|>after",
        "   \n\n\n   \t\t",
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "text%zu", i);
        put_text("spm", name, (uint8_t)(i % 4), texts[i]);
        for (int pre = 0; pre < 8; pre++) {
            snprintf(name, sizeof name, "text%zu-pre%d", i, pre);
            put_text("bpe", name, (uint8_t)(pre | (i % 4) << 6), texts[i]);
        }
    }
}

static void protocol_seeds(void)
{
    static const char *const lines[] = {
        "{\"op\":\"status\"}",
        "{\"op\":\"shutdown\",\"id\":\"x\"}",
        "{\"op\":\"complete\",\"id\":1,\"prompt\":\"Once upon a time\",\"n_predict\":40,"
        "\"temperature\":0}",
        "{\"op\":\"complete\",\"id\":\"a\",\"tokens\":[1,2,3],\"add_bos\":false,\"special\":false,"
        "\"stop\":[\"\\n\",\"END\"],\"seed\":42,\"top_k\":10,\"top_p\":0.9,\"min_p\":0.1,"
        "\"repeat_penalty\":1.1,\"repeat_last_n\":64,\"frequency_penalty\":0.5,"
        "\"presence_penalty\":0.5,\"ignore_eos\":true,\"session\":\"s1\",\"stream\":false}",
        "{\"op\":\"infill\",\"id\":2,\"prefix\":\"def f(x):\\n    \",\"suffix\":\"\\n    return y\","
        "\"context\":[{\"name\":\"a.py\",\"text\":\"import os\"},{\"text\":\"x = 1\"}],"
        "\"n_prefix\":100,\"n_suffix\":50,\"fallback\":\"prefix\"}",
        "{\"op\":\"chat\",\"id\":3,\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":\"Hi \\u00e9\\ud83d\\ude00\"}],\"template\":\"chatml\"}",
        "{\"op\":\"tokenize\",\"id\":4,\"text\":\"Hello world\",\"add_bos\":true,\"special\":true}",
        "{\"op\":\"cancel\",\"target\":1}",
        "{\"op\":\"complete\",\"prompt\":\"x\",\"lora\":[{\"name\":\"a\",\"scale\":0.5}]}",
        "{\"op\":\"nope\",\"id\":null}",
        "{\"op\":\"complete\",\"id\":[1],\"prompt\":1}",
        "[1,2,3]",
        "{\"op\":\"chat\",\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}",
        "{\"op\":\"complete\",\"prompt\":\"x\",\"n_predict\":-2,\"temperature\":\"hot\"}",
        "{\"op\":\"complete\",\"prompt\":\"a\",\"prompt\":\"b\"}",
        "{\"op\":\"",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "line%zu", i);
        put_str("protocol", name, lines[i]);
    }
}

static void template_seeds(void)
{
    static const char *const model_templates[] = {
        "", "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}",
        "<|start_header_id|>", "[INST] {{ m }} [/INST]", "<|user|>", "### Instruction:<|EOT|>",
        "### Instruction", "'Assistant: ' + message['content'] + eos_token",
        "<\xef\xbd\x9cUser\xef\xbd\x9c><\xef\xbd\x9c" "Assistant\xef\xbd\x9c>", "USER: ASSISTANT:",
        "{{ something else }}",
    };
    size_t n_mt = sizeof model_templates / sizeof model_templates[0];
    for (int pick = 0; pick < 12; pick++) {
        const char *mt = model_templates[(size_t)pick % n_mt];
        uint8_t buf[512];
        size_t k = 0;
        buf[k++] = (uint8_t)pick;
        buf[k++] = (uint8_t)(pick & 7);
        buf[k++] = (uint8_t)(pick * 5);
        buf[k++] = (uint8_t)(pick * 3);
        buf[k++] = (uint8_t)(pick % 3 ? 0 : 40 + pick);
        static const char *const segs[] = {"system", "Be brief.", "user", "def f(x):\n    ",
                                           "assistant", "\n    return y\n", "user",
                                           "line one\nline two\nline three\n"};
        memcpy(buf + k, mt, strlen(mt) + 1);
        k += strlen(mt) + 1;
        for (size_t s = 0; s < sizeof segs / sizeof segs[0]; s++) {
            memcpy(buf + k, segs[s], strlen(segs[s]) + 1);
            k += strlen(segs[s]) + 1;
        }
        char name[32];
        snprintf(name, sizeof name, "pick%d", pick);
        put("template", name, buf, k - 1);
    }
}

static void nib_seeds(void)
{
    /* arguments after "nib", NUL-separated, and the piped text */
#define A(args, in) {args, sizeof args - 1, in}
    static const struct {
        const char *args;
        size_t len;
        const char *in;
    } cases[] = {
        A("how do I undo the last commit", NULL),
        A("-m\0model.gguf\0-s\0be brief\0-t\0chatml\0question", NULL),
        A("-o\0temperature=0.5\0-o\0top_k=10\0-n\0100\0--seed\0042\0ask", NULL),
        A("--raw\0--no-stream\0-q\0-v\0-c\0continue", NULL),
        A("-t\0nonsense\0x", NULL),
        A("--cmd\0find big files", NULL),
        A("--init\0zsh", NULL),
        A("-n\0-5", NULL),
        A("-o\0bogus=1", NULL),
        A("--help", NULL),
        A("-V", NULL),
        A("--seed=-1", NULL),
        A("write a commit message", "diff --git a/x b/x\n+```code```\n+````\n"),
        A("", "text without a newline"),
        A("summarise", "\xff not UTF-8"),
        A("", ""),
    };
#undef A
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t buf[256];
        size_t k = 0;
        int n_args = cases[i].len ? 1 : 0;
        for (size_t c = 0; c < cases[i].len; c++)
            n_args += cases[i].args[c] == 0;
        buf[k++] = (uint8_t)(n_args | (cases[i].in != NULL) << 4);
        memcpy(buf + k, cases[i].args, cases[i].len);
        k += cases[i].len;
        if (n_args)
            buf[k++] = 0;
        if (cases[i].in) {
            memcpy(buf + k, cases[i].in, strlen(cases[i].in));
            k += strlen(cases[i].in);
        }
        char name[32];
        snprintf(name, sizeof name, "argv%zu", i);
        put("nib", name, buf, k);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz-seeds OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    if (mkdir(outdir, 0755) && errno != EEXIST) {
        perror(outdir);
        return 1;
    }
    gguf_seeds("gguf");
    gguf_seeds("model");
    lora_seeds("lora");
    text_seeds();
    protocol_seeds();
    template_seeds();
    nib_seeds();
    return 0;
}
