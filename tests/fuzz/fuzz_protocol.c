/*
 * fuzz_protocol.c - nibd's request parser (core/daemon/protocol.c) on any
 * line, as the daemon calls it, then the event the daemon would answer
 * with.
 *
 * Properties: a refused line gets an error event (a JSON object on one
 * line, with the request's id when it had a valid one); an accepted one
 * has the fields its op needs, within the documented limits.
 */
#include "fuzz.h"

#include <jansson.h>
#include <string.h>

#include "protocol.h"

/* The line is one JSON object ending in a newline, whose id is id. */
static void check_event(char *line, json_t *id)
{
    NBF_CHECK(line != NULL, "no event");
    size_t n = strlen(line);
    NBF_CHECK(n > 1 && line[n - 1] == '\n' && !memchr(line, '\n', n - 1), "not one line");
    json_error_t e;
    json_t *o = json_loadb(line, n, 0, &e);
    NBF_CHECK(json_is_object(o), "event does not parse: %s", e.text);
    json_t *got = json_object_get(o, "id");
    NBF_CHECK(got && (id ? json_equal(got, id) : json_is_null(got)), "event id differs");
    json_decref(o);
    free(line);
}

NBF_TARGET(protocol)
{
    nbd_request req;
    char msg[512];
    const char *code = nbd_parse((const char *)data, size, &req, msg, sizeof msg);
    if (code) {
        NBF_CHECK(msg[0] != 0, "no message for %s", code);
        check_event(nbd_event_error(req.id, code, msg), req.id);
        nbd_request_free(&req);
        return 0;
    }
    NBF_CHECK(json_is_object(req.json), "no request object");
    NBF_CHECK(req.n_stops >= 0 && req.n_stops <= NB_STOP_MAX, "%d stops", req.n_stops);
    for (int i = 0; i < req.n_stops; i++)
        NBF_CHECK(req.stops[i] != NULL, "stop %d", i);
    NBF_CHECK(req.n_predict >= -1 && req.n_predict <= NBD_MAX_PREDICT, "n_predict %d",
              req.n_predict);
    switch (req.op) {
    case NBD_OP_COMPLETE:
        NBF_CHECK(req.prompt || req.tokens || req.n_tokens == 0, "no prompt");
        NBF_CHECK(req.n_tokens >= 0, "n_tokens %d", req.n_tokens);
        for (int i = 0; i < req.n_tokens; i++)
            NBF_CHECK(req.tokens[i] >= 0, "token %d", req.tokens[i]);
        if (req.prompt)
            check_event(nbd_event_text(req.id, req.prompt, req.prompt_len), req.id);
        break;
    case NBD_OP_INFILL:
        NBF_CHECK(req.n_chunks >= 0, "n_chunks %d", req.n_chunks);
        for (int i = 0; i < req.n_chunks; i++)
            NBF_CHECK(req.chunks[i].name && req.chunks[i].text, "chunk %d", i);
        NBF_CHECK(req.n_prefix >= 0 && req.n_suffix >= 0, "budgets %d %d", req.n_prefix,
                  req.n_suffix);
        break;
    case NBD_OP_CHAT:
        NBF_CHECK(req.n_messages > 0, "no messages");
        for (int i = 0; i < req.n_messages; i++)
            NBF_CHECK(req.messages[i].role && req.messages[i].content, "message %d", i);
        break;
    case NBD_OP_TOKENIZE:
        NBF_CHECK(req.text != NULL, "no text");
        check_event(nbd_event_text(req.id, req.text, req.prompt_len), req.id);
        break;
    case NBD_OP_CANCEL:
        NBF_CHECK(req.target != NULL, "no target");
        break;
    case NBD_OP_STATUS:
    case NBD_OP_SHUTDOWN:
        break;
    }
    check_event(nbd_event_object(req.id, json_pack("{s:b}", "done", 1)), req.id);
    nbd_request_free(&req);
    return 0;
}
