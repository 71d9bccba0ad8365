/*
 * cmd_tokenize.c - `nibble tokenize`: print the token ids of a text.
 * Only the vocabulary is loaded, so vocabulary-only GGUF files work too.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools.h"

static const char tokenize_usage[] =
    "usage: nibble tokenize -m MODEL [options] [TEXT | -f FILE]\n"
    "\n"
    "Print the token ids of TEXT (or of FILE, or of stdin when it is not a\n"
    "terminal) on one line, separated by spaces.\n"
    "\n"
    "  -m, --model FILE   GGUF model or vocabulary file (default: $NIBBLE_MODEL)\n"
    "  -f, --file FILE    read the text from FILE ('-' for stdin)\n"
    "      --no-bos       do not add the beginning-of-text token\n"
    "      --special      turn control-token text such as </s> into its token\n"
    "      --pieces       print id:'piece' pairs instead of bare ids\n"
    "  -h, --help         show this help\n";

enum { OPT_NO_BOS = 256, OPT_SPECIAL, OPT_PIECES };

int cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"file", required_argument, 0, 'f'},
        {"no-bos", no_argument, 0, OPT_NO_BOS}, {"special", no_argument, 0, OPT_SPECIAL},
        {"pieces", no_argument, 0, OPT_PIECES}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model_path = getenv("NIBBLE_MODEL"), *file = NULL;
    int add_bos = 1, special = 0, pieces = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'f': file = optarg; break;
        case OPT_NO_BOS: add_bos = 0; break;
        case OPT_SPECIAL: special = 1; break;
        case OPT_PIECES: pieces = 1; break;
        case 'h': fputs(tokenize_usage, stdout); return EXIT_OK;
        default: return tool_usage_error("tokenize", "unknown option");
        }
    }
    if (!model_path || !*model_path)
        return tool_usage_error("tokenize", "no model: give -m FILE or set NIBBLE_MODEL");
    if (argc - optind > 1)
        return tool_usage_error("tokenize", "give the text as one argument (quote it)");
    if (argc - optind == 1 && file)
        return tool_usage_error("tokenize", "give TEXT or -f FILE, not both");
    if (argc - optind == 0 && !file) {
        if (isatty(0))
            return tool_usage_error("tokenize", "no text: give TEXT, -f FILE or pipe it in");
        file = "-";
    }
    char *buf = NULL;
    const char *text;
    size_t len;
    if (file) {
        if (!(buf = read_all(file, &len)))
            return tool_error("%s: cannot read", file);
        text = buf;
    } else {
        text = argv[optind];
        len = strlen(text);
    }
    int rc = EXIT_ERR;
    nb_token *ids = NULL;
    int64_t n = 0;
    nb_model *m = open_model(model_path, 1);
    if (!m)
        goto done;
    int flags = (add_bos ? NB_TOK_ADD_SPECIAL : 0) | (special ? NB_TOK_PARSE_SPECIAL : 0);
    if (!(ids = tokenize_all(m, text, len, flags, &n)))
        goto done;
    for (int64_t i = 0; i < n; i++) {
        if (i)
            putchar(' ');
        if (pieces) {
            char piece[NB_MAX_PIECE];
            int pl = nb_token_piece(m, ids[i], piece, sizeof piece, NB_PIECE_SPECIAL);
            pl = pl < 0 ? 0 : pl > (int)sizeof piece ? (int)sizeof piece : pl;
            printf("%d:'%.*s'", ids[i], pl, piece);
        } else {
            printf("%d", ids[i]);
        }
    }
    putchar('\n');
    rc = fflush(stdout) == 0 ? EXIT_OK : tool_error("cannot write the output");
done:
    free(ids);
    nb_model_close(m);
    free(buf);
    return rc;
}
