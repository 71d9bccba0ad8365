/*
 * protocol.h - nibd's requests and events (doc/protocol.md), independent of
 * sockets so that they can be tested on their own.
 */
#ifndef NIBD_PROTOCOL_H
#define NIBD_PROTOCOL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "nibble.h"

#define NBD_MAX_FRAME (8u << 20)   /* bytes per line, newline excluded */
#define NBD_MAX_ID 256             /* bytes of a request id or session name */
#define NBD_MAX_PREDICT (1 << 20)
#define NBD_MAX_TOKENIZE (1 << 20) /* tokens in a tokenize reply */
#define NBD_MAX_LORA 16            /* adapters per request, and per daemon */
#define NBD_MAX_LORA_NAME NB_LORA_NAME_MAX /* bytes of an adapter's name */
#define NBD_MAX_LORA_SCALE 100.0f  /* |scale| of a request's adapter */

typedef enum nbd_op {
    NBD_OP_COMPLETE,
    NBD_OP_INFILL,
    NBD_OP_CHAT,
    NBD_OP_TOKENIZE,
    NBD_OP_CANCEL,
    NBD_OP_STATUS,
    NBD_OP_SHUTDOWN
} nbd_op;

typedef struct nbd_chunk {
    const char *name, *text; /* owned by the request's JSON */
} nbd_chunk;

typedef struct nbd_message {
    const char *role, *content;
} nbd_message;

typedef struct nbd_request {
    nbd_op op;
    json_t *json;            /* the parsed request; strings below point into it */
    json_t *id;              /* borrowed from json, or NULL */
    /* complete */
    const char *prompt;
    size_t prompt_len;
    nb_token *tokens;        /* malloc'd when "tokens" was given */
    int n_tokens;
    int add_bos, special, stream, ignore_eos;
    /* infill */
    const char *prefix, *suffix;
    nbd_chunk *chunks;
    int n_chunks;
    int n_prefix, n_suffix;  /* token budgets, 0 = the daemon's choice */
    int fallback_prefix;     /* "fallback": "prefix" */
    /* chat */
    nbd_message *messages;
    int n_messages;
    const char *template_name;
    /* tokenize */
    const char *text;
    /* cancel */
    json_t *target;
    /* generation */
    nb_sampler_params sp;
    int has_seed;
    int n_predict;
    const char *stops[NB_STOP_MAX];
    int n_stops;
    const char *session;
    /* adapters: names (into json) and scales, in the order given */
    const char *lora_names[NBD_MAX_LORA];
    float lora_scales[NBD_MAX_LORA];
    int n_lora;
} nbd_request;

/* Error codes of doc/protocol.md. */
#define NBD_E_JSON "invalid_json"
#define NBD_E_FRAME "frame_too_large"
#define NBD_E_OP "unknown_op"
#define NBD_E_REQUEST "invalid_request"
#define NBD_E_CONTEXT "context_full"
#define NBD_E_UNSUPPORTED "unsupported"
#define NBD_E_BUSY "busy"
#define NBD_E_INTERNAL "internal"

/* Parse one line.  On success returns NULL and fills req (free it with
 * nbd_request_free).  On failure returns one of the error codes above,
 * writes a message naming the problem into msg, and req->id holds the id
 * when one could be read (so the error can be addressed). */
const char *nbd_parse(const char *line, size_t len, nbd_request *req, char *msg, size_t msglen);
void nbd_request_free(nbd_request *req);

/* Events, as malloc'd lines ending in "\n" (NULL on out of memory). */
char *nbd_event_text(json_t *id, const char *text, size_t len);
char *nbd_event_error(json_t *id, const char *code, const char *msg);
/* Any object with "id" added; the object is consumed. */
char *nbd_event_object(json_t *id, json_t *obj);

#endif
