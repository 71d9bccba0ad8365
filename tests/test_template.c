/*
 * test_template.c - chat templates (detection and rendering, against the
 * formats written out by hand) and fill-in-the-middle prompts.
 */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf_builder.h"
#include "nibble.h"

/* A vocabulary-only SentencePiece model: <unk> <s> </s>, the byte tokens,
 * then extra tokens (the first n_control as control tokens), with the
 * given chat template (NULL: none). */
static nb_model *vocab_model_ex(const char *chat_template, const char *const *extra, int n_extra,
                                int n_control, int control_type)
{
    gguf_builder *b = gb_new();
    assert_non_null(b);
    gb_kv_str(b, "general.architecture", "llama");
    int n = 3 + 256 + n_extra;
    const char **toks = calloc((size_t)n, sizeof *toks);
    float *scores = calloc((size_t)n, sizeof *scores);
    int32_t *types = calloc((size_t)n, sizeof *types);
    char (*bytes)[8] = calloc(256, 8);
    toks[0] = "<unk>", toks[1] = "<s>", toks[2] = "</s>";
    types[0] = 2, types[1] = 3, types[2] = 3;
    for (int i = 0; i < 256; i++) {
        snprintf(bytes[i], 8, "<0x%02X>", i);
        toks[3 + i] = bytes[i];
        types[3 + i] = 6;
    }
    for (int i = 0; i < n_extra; i++) {
        toks[259 + i] = extra[i];
        types[259 + i] = i < n_control ? control_type : 1;
    }
    gb_kv_str(b, "tokenizer.ggml.model", "llama");
    gb_kv_arr_str(b, "tokenizer.ggml.tokens", toks, (uint64_t)n);
    gb_kv_arr(b, "tokenizer.ggml.scores", GB_FLOAT32, scores, (uint64_t)n);
    gb_kv_arr(b, "tokenizer.ggml.token_type", GB_INT32, types, (uint64_t)n);
    if (chat_template)
        gb_kv_str(b, "tokenizer.chat_template", chat_template);
    size_t len;
    uint8_t *img = gb_build(b, &len);
    char *path = nbt_write_temp(img, len, ".gguf");
    nb_model_params p = nb_model_default_params();
    p.vocab_only = 1;
    nb_model *m = NULL;
    char err[256];
    if (nb_model_open(path, &p, &m, err, sizeof err))
        fail_msg("%s", err);
    unlink(path);
    free(path);
    free(img);
    gb_free(b);
    free(toks), free(scores), free(types), free(bytes);
    return m;
}

/* ... with, optionally, CodeLlama's FIM tokens (user-defined, as there). */
static nb_model *vocab_model(const char *chat_template, int fim)
{
    static const char *const extra[] = {"\xe2\x96\x81<PRE>", "\xe2\x96\x81<SUF>",
                                        "\xe2\x96\x81<MID>", "\xe2\x96\x81<EOT>",
                                        "\xe2\x96\x81x",     "\xe2\x96\x81y"};
    return fim ? vocab_model_ex(chat_template, extra, 6, 4, 4)
               : vocab_model_ex(chat_template, extra + 4, 2, 0, 4);
}

#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

static const nb_chat_msg chat[] = {
    {"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}};

static void expect(nb_model *m, const char *tmpl, const char *want)
{
    char *out, err[128];
    assert_int_equal(nb_chat_render(m, tmpl, chat, 4, 1, &out, err, sizeof err), NB_OK);
    if (strcmp(out, want))
        fail_msg("%s:\n got '%s'\nwant '%s'", tmpl, out, want);
    free(out);
}

static void test_render(void **state)
{
    (void)state;
    nb_model *m = vocab_model(NULL, 0);
    expect(m, "chatml",
           "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
           "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n"
           "<|im_start|>assistant\n");
    expect(m, "llama2", "[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST]A1</s>[INST] U2 [/INST]");
    expect(m, "llama3",
           "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nU2<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect(m, "zephyr",
           "<|system|>\nS</s>\n<|user|>\nU1</s>\n<|assistant|>\nA1</s>\n<|user|>\nU2</s>\n"
           "<|assistant|>\n");
    expect(m, "alpaca",
           "S\n\n### Instruction:\nU1\n\n### Response:\nA1\n\n### Instruction:\nU2\n\n"
           "### Response:\n");
    expect(m, "vicuna", "S\nUSER: U1\nASSISTANT: A1</s>\nUSER: U2\nASSISTANT:");
    /* DeepSeek-Coder 1.x, DeepSeek-V2 and V3, as llama.cpp renders them */
    expect(m, "deepseek",
           "S### Instruction:\nU1\n### Response:\nA1\n<|EOT|>\n### Instruction:\nU2\n"
           "### Response:\n");
    expect(m, "deepseek2", "S\n\nUser: U1\n\nAssistant: A1" DS_EOS "User: U2\n\nAssistant:");
    expect(m, "deepseek3", "S\n\n" DS_USER "U1" DS_ASSISTANT "A1" DS_EOS DS_USER "U2" DS_ASSISTANT);
    expect(m, "raw", "S\n\nU1\n\nA1\n\nU2\n\n");
    /* without the assistant opening */
    char *out;
    assert_int_equal(nb_chat_render(m, "chatml", chat + 1, 1, 0, &out, NULL, 0), NB_OK);
    assert_string_equal(out, "<|im_start|>user\nU1<|im_end|>\n");
    free(out);
    /* errors */
    char err[128];
    assert_int_equal(nb_chat_render(m, "jinja", chat, 4, 1, &out, err, sizeof err), NB_ERR_INVALID);
    assert_non_null(strstr(err, "jinja"));
    assert_null(out);
    nb_chat_msg bad = {"robot", "x"};
    assert_int_equal(nb_chat_render(m, "chatml", &bad, 1, 1, &out, err, sizeof err), NB_ERR_INVALID);
    assert_non_null(strstr(err, "role"));
    nb_model_close(m);
}

static void test_detect(void **state)
{
    (void)state;
    const struct {
        const char *tmpl, *name;
    } cases[] = {
        {"{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}", "chatml"},
        {"{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}", "llama2"},
        {"<|start_header_id|>{{ role }}<|end_header_id|>\n\n{{ content }}<|eot_id|>", "llama3"},
        {"{% for m in messages %}<|user|>\n{{ m.content }}</s>{% endfor %}", "zephyr"},
        {"### Instruction:\n{{ x }}\n\n### Response:", "alpaca"},
        /* excerpts of the models' own templates */
        {"{{'### Instruction:\\n' + message['content'] + '\\n'}}{% else %}"
         "{{'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'}}", "deepseek"},
        {"{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' %}"
         "{{ 'Assistant: ' + message['content'] + eos_token }}", "deepseek2"},
        {"{{'" DS_USER "' + message['content']}}{%- endif %}{%- if message['role'] == "
         "'assistant' %}{{'" DS_ASSISTANT "' + message['content'] + '" DS_EOS "'}}", "deepseek3"},
        {"{{ system }} USER: {{ u }} ASSISTANT: {{ a }}", "vicuna"},
        {"{{ something unknown }}", "unknown"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        nb_model *m = vocab_model(cases[i].tmpl, 0);
        assert_string_equal(nb_chat_template_name(m), cases[i].name);
        nb_model_close(m);
    }
    nb_model *m = vocab_model(NULL, 0);
    assert_string_equal(nb_chat_template_name(m), "raw");
    nb_model_close(m);
    /* an unrecognised template falls back to ChatML; the name itself is not
     * one a caller may ask for */
    m = vocab_model("{{ something unknown }}", 0);
    nb_chat_msg msg = {"user", "hi"};
    char *got, *want, err[256];
    assert_int_equal(nb_chat_render(m, NULL, &msg, 1, 1, &got, err, sizeof err), NB_OK);
    assert_int_equal(nb_chat_render(m, "chatml", &msg, 1, 1, &want, err, sizeof err), NB_OK);
    assert_string_equal(got, want);
    free(got), free(want);
    assert_int_equal(nb_chat_render(m, "unknown", &msg, 1, 1, &got, err, sizeof err),
                     NB_ERR_INVALID);
    assert_null(got);
    nb_model_close(m);
}

static void test_infill(void **state)
{
    (void)state;
    nb_model *m = vocab_model(NULL, 1);
    assert_true(nb_model_has_fim(m));
    /* ids: <s> = 1, ▁<PRE> 259, ▁<SUF> 260, ▁<MID> 261, ▁<EOT> 262 */
    nb_token *ids;
    int64_t n;
    assert_int_equal(nb_infill_tokens(m, "a", "b", NULL, 0, &ids, &n, NULL, 0), NB_OK);
    /* BOS, PRE, ▁ a (byte tokens), SUF, ▁ b, MID */
    int64_t k = 0;
    assert_int_equal(ids[k++], 1);
    assert_int_equal(ids[k++], 259);
    while (k < n && ids[k] != 260)
        k++;
    assert_true(k < n - 1);
    assert_int_equal(ids[n - 1], 261);
    free(ids);
    /* <EOT> ends generation (CodeLlama's end of infill) */
    assert_true(nb_model_is_eog(m, 262));
    nb_chunk chunks[] = {{"other.c", "int x;"}};
    int64_t n2;
    assert_int_equal(nb_infill_tokens(m, "a", "b", chunks, 1, &ids, &n2, NULL, 0), NB_OK);
    assert_true(n2 > n); /* the chunk comes first, as text */
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[n2 - 1], 261);
    free(ids);
    nb_model_close(m);

    /* a model without FIM tokens: a clear refusal */
    m = vocab_model(NULL, 0);
    assert_false(nb_model_has_fim(m));
    char err[256];
    assert_int_equal(nb_infill_tokens(m, "a", "b", NULL, 0, &ids, &n, err, sizeof err),
                     NB_ERR_UNSUPPORTED);
    assert_non_null(strstr(err, "fill-in-the-middle"));
    assert_null(ids);
    nb_model_close(m);
}

/* Qwen2.5-Coder's tokens are found by name: prefix, suffix and middle,
 * the file separator before each context chunk, and the repository name;
 * the ones that end an infill stop generation. */
static void test_infill_qwen(void **state)
{
    (void)state;
    static const char *const extra[] = {"<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>",
                                        "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>",
                                        "<|file_sep|>", "\xe2\x96\x81x"};
    enum { ENDOFTEXT = 259, PRE, MID, SUF, PAD, REPO, SEP };
    nb_model *m = vocab_model_ex("{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}",
                                 extra, 8, 7, 3);
    assert_true(nb_model_has_fim(m));
    nb_model_info in;
    nb_model_get_info(m, &in);
    assert_int_equal(in.fim_pre, PRE);
    assert_int_equal(in.fim_suf, SUF);
    assert_int_equal(in.fim_mid, MID);
    assert_int_equal(in.fim_sep, SEP);
    assert_int_equal(in.fim_rep, REPO);
    assert_string_equal(nb_chat_template_name(m), "chatml");
    for (int t = ENDOFTEXT; t <= SEP; t++)
        if (t != PRE && t != MID && t != SUF)
            assert_true(nb_model_is_eog(m, t));
    assert_false(nb_model_is_eog(m, PRE));
    nb_chunk chunks[] = {{"util.py", "x"}};
    nb_token *ids;
    int64_t n;
    assert_int_equal(nb_infill_tokens(m, "a", "b", chunks, 1, &ids, &n, NULL, 0), NB_OK);
    /* [BOS] <|file_sep|>util.py\nx\n\n <|file_sep|> <|fim_prefix|>a<|fim_suffix|>b<|fim_middle|> */
    int64_t k = ids[0] == 1;
    assert_int_equal(ids[k], SEP);
    int64_t pre = -1, suf = -1, seps = 0;
    for (int64_t i = 0; i < n; i++) {
        seps += ids[i] == SEP;
        if (ids[i] == PRE)
            pre = i;
        if (ids[i] == SUF)
            suf = i;
    }
    assert_int_equal(seps, 2);
    assert_int_equal(ids[pre - 1], SEP);
    assert_true(pre < suf);
    assert_int_equal(ids[n - 1], MID);
    free(ids);
    nb_model_close(m);
}

/* DeepSeek-Coder's <｜fim▁begin｜>, <｜fim▁hole｜>, <｜fim▁end｜> in its real
 * vocabulary. */
static void test_infill_deepseek(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char *path = nbt_data_path("vocab/ggml-vocab-deepseek-coder.gguf");
    nb_model_params p = nb_model_default_params();
    p.vocab_only = 1;
    nb_model *m;
    char err[256];
    if (nb_model_open(path, &p, &m, err, sizeof err))
        fail_msg("%s: %s", path, err);
    free(path);
    assert_true(nb_model_has_fim(m));
    static const char *const names[3] = {
        "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
        "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>",
        "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>"};
    nb_model_info in;
    nb_model_get_info(m, &in);
    nb_token got[3] = {in.fim_pre, in.fim_suf, in.fim_mid};
    for (int i = 0; i < 3; i++) {
        char piece[64];
        int len = nb_token_piece(m, got[i], piece, sizeof piece, NB_PIECE_SPECIAL);
        assert_true(len > 0 && len < 64);
        piece[len] = 0;
        assert_string_equal(piece, names[i]);
    }
    nb_model_close(m);
}

static int64_t ntok(nb_model *m, const char *s, size_t len)
{
    return len ? nb_tokenize(m, s, len, NULL, 0, 0) : 0;
}

/* Offset of the start of line k (0-based) of s. */
static size_t line_at(const char *s, int k)
{
    size_t off = 0;
    while (k-- > 0)
        off = (size_t)(strchr(s + off, '\n') - s) + 1;
    return off;
}

/* Token budgets: cuts on line boundaries, the prefix's at every 16th line
 * (so typing at its end keeps its start), chunks dropped earliest first. */
static void test_infill_fit(void **state)
{
    (void)state;
    nb_model *m = vocab_model(NULL, 1);
    char prefix[8192] = "", suffix[4096] = "";
    for (int i = 0; i < 100; i++)
        snprintf(prefix + strlen(prefix), sizeof prefix - strlen(prefix), "line %d of the prefix\n", i);
    strcat(prefix, "int x = ");
    for (int i = 0; i < 50; i++)
        snprintf(suffix + strlen(suffix), sizeof suffix - strlen(suffix), "after %d\n", i);
    nb_token *ids;
    int64_t n;
    char err[256];

    /* no budgets: exactly nb_infill_tokens */
    nb_infill_fit f = {0};
    nb_token *ids0;
    int64_t n0;
    assert_int_equal(nb_infill_tokens(m, prefix, suffix, NULL, 0, &ids0, &n0, NULL, 0), NB_OK);
    assert_int_equal(nb_infill_tokens_fit(m, prefix, suffix, NULL, 0, &f, &ids, &n, err, sizeof err),
                     NB_OK);
    assert_int_equal(n, n0);
    assert_memory_equal(ids, ids0, (size_t)n * sizeof *ids);
    assert_true(f.fim);
    assert_int_equal(f.prefix_dropped + f.suffix_dropped, 0);
    free(ids), free(ids0);

    /* a prefix budget: the kept part starts at line 16k, the first such
     * start that fits */
    const int budget = 1000;
    f = (nb_infill_fit){.n_prefix = budget, .n_suffix = 100};
    assert_int_equal(nb_infill_tokens_fit(m, prefix, suffix, NULL, 0, &f, &ids, &n, err, sizeof err),
                     NB_OK);
    free(ids);
    size_t len = strlen(prefix), cut = f.prefix_dropped;
    int k = 0;
    while (line_at(prefix, k) < cut)
        k++;
    assert_int_equal(line_at(prefix, k), cut); /* a line start ... */
    assert_int_equal(k % 16, 0);               /* ... at a multiple of 16 */
    assert_true(k > 0);
    assert_int_equal(f.prefix_tokens, ntok(m, prefix + cut, len - cut));
    assert_true(f.prefix_tokens <= budget);
    size_t before = line_at(prefix, k - 16);
    assert_true(ntok(m, prefix + before, len - before) > budget);
    /* the suffix: whole lines, as many as fit */
    size_t kept = strlen(suffix) - f.suffix_dropped;
    assert_true(kept > 0 && suffix[kept - 1] == '\n');
    assert_true(f.suffix_tokens <= 100);
    size_t next = (size_t)(strchr(suffix + kept, '\n') - suffix) + 1;
    assert_true(ntok(m, suffix, next) > 100);

    /* typing at the end keeps the start until the budget is crossed; each
     * start is the first 16th line from which the rest fits (a linear scan
     * here, a binary search there) */
    char typed[8800];
    size_t same = 0, moved = 0, last = cut;
    for (int i = 0; i < 120; i++) {
        snprintf(typed, sizeof typed, "%s", prefix);
        memset(typed + len, (int)'z', (size_t)i * 4);
        typed[len + (size_t)i * 4] = 0;
        size_t tl = strlen(typed), want = 0;
        for (int line = 16; line < 100; line += 16)
            if (ntok(m, typed + line_at(typed, line), tl - line_at(typed, line)) <= budget) {
                want = line_at(typed, line);
                break;
            }
        if (!want)
            break; /* the last lines alone exceed the budget: finer cuts apply */
        nb_infill_fit g = {.n_prefix = budget};
        assert_int_equal(nb_infill_tokens_fit(m, typed, "", NULL, 0, &g, &ids, &n, err, sizeof err),
                         NB_OK);
        free(ids);
        assert_int_equal(g.prefix_dropped, want);
        if (g.prefix_dropped == last)
            same++;
        else
            moved++, last = g.prefix_dropped;
    }
    assert_true(moved >= 1);   /* the window did move on ... */
    assert_true(same > 8 * moved); /* ... but in rare jumps */

    /* one line longer than the budget: the last budget tokens */
    char huge[3000];
    memset(huge, 'q', sizeof huge - 1);
    huge[sizeof huge - 1] = 0;
    f = (nb_infill_fit){.n_prefix = 50};
    assert_int_equal(nb_infill_tokens_fit(m, huge, "", NULL, 0, &f, &ids, &n, err, sizeof err), NB_OK);
    free(ids);
    assert_int_equal(f.prefix_tokens, 50);

    /* n_max: chunks that do not fit go, the earliest first */
    nb_chunk chunks[3] = {{"a.c", "int a;\n"}, {"b.c", "int b;\n"}, {"c.c", "int c;\n"}};
    f = (nb_infill_fit){.n_prefix = 0};
    assert_int_equal(nb_infill_tokens_fit(m, "x", "y", chunks, 3, &f, &ids, &n, err, sizeof err), NB_OK);
    free(ids);
    assert_int_equal(f.chunks_used, 3);
    int64_t all = n;
    nb_infill_fit one = {0};
    assert_int_equal(nb_infill_tokens_fit(m, "x", "y", chunks + 2, 1, &one, &ids, &n, err, sizeof err),
                     NB_OK);
    free(ids);
    f = (nb_infill_fit){.n_max = (int)n + 1}; /* room for the last chunk only */
    assert_int_equal(nb_infill_tokens_fit(m, "x", "y", chunks, 3, &f, &ids, &n, err, sizeof err), NB_OK);
    assert_int_equal(f.chunks_used, 1);
    assert_true(n < all && n <= f.n_max);
    free(ids);
    /* a total budget also bounds prefix + suffix */
    f = (nb_infill_fit){.n_max = 300};
    assert_int_equal(nb_infill_tokens_fit(m, prefix, suffix, chunks, 3, &f, &ids, &n, err, sizeof err),
                     NB_OK);
    free(ids);
    assert_true(n <= 300);
    assert_true(f.suffix_tokens <= 300 / 4);
    assert_true(f.prefix_dropped > 0);
    /* too small for the markers */
    f = (nb_infill_fit){.n_max = 3};
    assert_int_equal(nb_infill_tokens_fit(m, "x", "y", NULL, 0, &f, &ids, &n, err, sizeof err),
                     NB_ERR_INVALID);
    nb_model_close(m);

    /* without FIM tokens: refused, or with the fallback the prefix alone */
    m = vocab_model(NULL, 0);
    f = (nb_infill_fit){0};
    assert_int_equal(nb_infill_tokens_fit(m, "abc", "def", NULL, 0, &f, &ids, &n, err, sizeof err),
                     NB_ERR_UNSUPPORTED);
    f = (nb_infill_fit){.fallback_prefix = 1};
    assert_int_equal(nb_infill_tokens_fit(m, "abc", "def", NULL, 0, &f, &ids, &n, err, sizeof err),
                     NB_OK);
    assert_false(f.fim);
    nb_token want[64];
    int64_t nw = nb_tokenize(m, "abc", 3, want, 64, NB_TOK_ADD_SPECIAL);
    assert_int_equal(n, nw);
    assert_memory_equal(ids, want, (size_t)n * sizeof *ids);
    free(ids);
    nb_model_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_infill),
        cmocka_unit_test(test_infill_fit),
        cmocka_unit_test(test_infill_qwen),
        cmocka_unit_test(test_infill_deepseek),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
