/*
 * lora_args.c - the --lora FILE [--lora-scale S] options that run and eval
 * share: parsing, opening the adapters for a model, attaching them to a
 * context.
 */
#include <math.h>
#include <stdlib.h>

#include "tools.h"

int tool_lora_arg(tool_lora *l, const char *sub, int is_scale, const char *arg)
{
    if (!is_scale) {
        if (l->n == TOOL_MAX_LORA)
            return tool_usage_error(sub, "at most %d --lora adapters", TOOL_MAX_LORA);
        l->path[l->n] = arg;
        l->scale[l->n++] = 1.0f;
        return 0;
    }
    if (!l->n)
        return tool_usage_error(sub, "--lora-scale goes after a --lora FILE");
    char *end;
    float v = strtof(arg, &end);
    if (end == arg || *end || !isfinite(v))
        return tool_usage_error(sub, "--lora-scale wants a number, not '%s'", arg);
    l->scale[l->n - 1] = v;
    return 0;
}

int tool_lora_attach(tool_lora *l, const nb_model *m, nb_ctx *ctx)
{
    char err[512];
    for (int i = 0; i < l->n; i++)
        if (!l->lora[i] && nb_lora_open(m, l->path[i], &l->lora[i], err, sizeof err)) {
            tool_error("%s", err);
            return -1;
        }
    if (l->n && nb_ctx_set_lora(ctx, l->lora, l->scale, l->n)) {
        tool_error("%s", nb_ctx_errmsg(ctx));
        return -1;
    }
    return 0;
}

void tool_lora_free(tool_lora *l)
{
    for (int i = 0; i < l->n; i++) {
        nb_lora_close(l->lora[i]);
        l->lora[i] = NULL;
    }
}
