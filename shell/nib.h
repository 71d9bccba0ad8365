/*
 * nib.h - pieces of the nib shell helper shared between its files.
 */
#ifndef NIB_H
#define NIB_H

#include <jansson.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>

#include "nibble.h"

enum { NIB_OK = 0, NIB_ERR = 1, NIB_USAGE = 2, NIB_CANCELLED = 130 };

typedef struct nib_opts {
    const char *model;      /* -m, $NIBBLE_MODEL, config */
    const char *system;     /* -s */
    const char *tmpl;       /* -t */
    json_t *sampling;       /* -o key=value, -n, --seed: keys of the protocol */
    int raw;                /* --raw: no chat template */
    int stream;             /* 0 with --no-stream */
    int quiet;              /* -q: no spinner, no notes */
    int verbose;            /* -v: token counts and timings on stderr */
    int cont;               /* -c: continue the last conversation */
    nb_config cfg;
} nib_opts;

/* Set by the SIGINT handler while a request runs. */
extern volatile sig_atomic_t nib_interrupted;

/* "nib: " + message on stderr. */
void nib_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nib_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* "nib: " + the message (fmt has one %s for arg) + a hint on stderr;
 * returns NIB_USAGE. */
int nib_usage_error(const char *fmt, const char *arg);

/* What the command line asked for besides the options in nib_opts. */
typedef struct nib_args {
    const char *cmd_task;   /* --cmd */
    const char *init_shell; /* --init */
    int first;              /* index in argv of the question's first word */
} nib_args;

/* Parse the options after the config file has filled o (args.c; never
 * connects to anything).  Returns -1 to go on, or the exit code when nib
 * is done: after --help or --version (printed on out) or a usage error
 * (on stderr).  An unknown -t template is dropped with a warning; n_predict
 * defaults to 512. */
int nib_parse_args(int argc, char **argv, nib_opts *o, nib_args *a, FILE *out);
/* The n words joined with single spaces (malloc'd; NULL when out of memory). */
char *nib_join_words(int n, char *const *words);
/* The message to send for a question and piped text (piped is NULL when
 * stdin is not input): the text alone, the question alone, or the question,
 * a blank line and the text between fences.  NIB_OK with *message
 * malloc'd, else the exit code after printing the error (the text is not
 * UTF-8, or both are empty). */
int nib_message(const char *question, const char *piped, size_t plen, char **message);

/* Set a sampling key from "KEY=NUMBER" (-o, /set); -1 when the key is not
 * one of the protocol's or the value not a number. */
int nib_set_option(nib_opts *o, const char *kv);

/* The model a daemon nib starts would load: -m, $NIBBLE_MODEL, the config
 * file's, or the one `nib pull` made the default (in buf); NULL if none. */
const char *nib_model_path(const nib_opts *o, char *buf, size_t cap);

/* Connect to nibd (starting it with the configured model). */
nb_client *nib_connect(const nib_opts *o);

/* Send a request and stream its text to out; returns an exit code.  The
 * answer's text is appended to *answer when answer is non-NULL.  A SIGINT
 * during the request cancels it (NIB_CANCELLED). */
int nib_request(nb_client *c, const nib_opts *o, json_t *req, FILE *out, char **answer);

/* A chat request for messages (a JSON array); the session keeps the
 * daemon's cache of the conversation. */
json_t *nib_chat_request(const nib_opts *o, json_t *messages, const char *session);

/* The interactive chat (repl.c). */
int nib_repl(nib_opts *o);
/* Conversations (repl.c): load the last one, save one. */
json_t *nib_conv_load_last(char *id, size_t idlen);
int nib_conv_save(const char *id, json_t *messages);
void nib_conv_new_id(char *id, size_t idlen);

/* Downloads (pull.c). */
int nib_pull(int argc, char **argv, const nib_opts *o);
int nib_models(void);
/* $XDG_DATA_HOME/nibble (created). */
int nib_data_dir(char *buf, size_t cap, const char *sub);

#endif
