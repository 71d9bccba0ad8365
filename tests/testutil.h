/*
 * testutil.h - helpers shared by the cmocka tests: where the reference
 * data and the built programs are, temporary files, running a program and
 * capturing its output.
 */
#ifndef NIBBLE_TESTUTIL_H
#define NIBBLE_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>

#include "nibble.h"

/* Directory of the shared reference data ($NIBBLE_TEST_DATA, else
 * ../shared beside the checkout), or NULL when it is absent. */
const char *nbt_data_dir(void);

/* Path of a file under the data directory (static buffer per call site is
 * not needed: returns malloc'd memory the caller frees), or NULL. */
char *nbt_data_path(const char *rel);

/* Skip the calling cmocka test when the reference data is absent, after
 * printing "skipped: no reference data" once per process. */
#define NBT_REQUIRE_DATA()                 \
    do {                                   \
        if (!nbt_data_dir()) {             \
            nbt_note_no_data();            \
            skip();                        \
        }                                  \
    } while (0)
void nbt_note_no_data(void);

/* Path of a built program (NIBBLE_BIN/name).  Static storage. */
const char *nbt_bin(const char *name);

/* Read a whole file; returns malloc'd bytes (NUL-terminated) or NULL. */
char *nbt_read_file(const char *path, size_t *len);
/* Write bytes to a fresh temporary file; returns its malloc'd path. */
char *nbt_write_temp(const void *data, size_t len, const char *suffix);

/* Run argv (argv[0] is a path) with stdin from /dev/null, capturing
 * stdout and stderr (malloc'd, NUL-terminated; pass NULL to discard).
 * Returns the exit status, 128+signal when killed, -1 when it could not
 * be run.  timeout_s > 0 kills the child after that many seconds. */
int nbt_run(char *const argv[], char **out, char **err, int timeout_s);

/* The first executable name on $PATH, its path written into buf; 0 when
 * there is none. */
int nbt_find_program(const char *name, char *buf, size_t cap);

/* The continuation `nibble eval -m MODEL -p PROMPT --greedy N --json`
 * reports (malloc'd, not empty); the test fails when eval does. */
char *nbt_eval_text(const char *model, const char *prompt, int n);
/* The same with more eval options (NULL-terminated, may be NULL). */
char *nbt_eval_text_args(const char *model, const char *prompt, int n, const char *const *extra);

/* The client library against a test daemon's socket (no auto-start); NULL
 * when it cannot connect. */
nb_client *nbt_connect(const char *sock);
/* Send one request built printf-style (the test fails when it cannot). */
void nbt_send(nb_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The next event as JSON, or NULL on timeout or hang-up. */
json_t *nbt_event(nb_client *c, int timeout_ms);
/* Events until the final one, which is returned (json_decref it); the
 * streamed text pieces are concatenated into *text (malloc'd) when given. */
json_t *nbt_finish(nb_client *c, char **text);

/* A private nibd: started on a socket in a fresh temporary directory with
 * --config /dev/null, -t 2 and the extra arguments (NULL-terminated, may
 * be NULL), and waited for until it answers; the test fails otherwise.
 * Its output goes to /dev/null unless NIBBLE_TEST_VERBOSE is set. */
typedef struct nbt_daemon {
    int pid;
    char dir[40];
    char sock[64];
} nbt_daemon;

void nbt_daemon_start(nbt_daemon *d, const char *model_path, const char *const *extra);
/* SIGTERM, wait, remove the directory; returns the wait status. */
int nbt_daemon_stop(nbt_daemon *d);

#endif
