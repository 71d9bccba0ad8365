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

/* Milliseconds of the monotonic clock. */
double nbt_now_ms(void);
/* How often `what` (not empty) occurs in s, without overlaps. */
int nbt_count(const char *s, const char *what);

/* Read a whole file; returns malloc'd bytes (NUL-terminated) or NULL. */
char *nbt_read_file(const char *path, size_t *len);
/* Write bytes to a fresh temporary file; returns its malloc'd path. */
char *nbt_write_temp(const void *data, size_t len, const char *suffix);

/* Run argv (argv[0] is a path) with stdin from /dev/null, capturing
 * stdout and stderr (malloc'd, NUL-terminated; pass NULL to discard).
 * Returns the exit status, 128+signal when killed, -1 when it could not
 * be run.  timeout_s > 0 kills the child after that many seconds. */
int nbt_run(char *const argv[], char **out, char **err, int timeout_s);
/* The same, with stdin from a file and/or a file size limit
 * (RLIMIT_FSIZE, SIGXFSZ ignored so that writes past it fail with EFBIG);
 * NULL options are nbt_run's. */
typedef struct nbt_run_opts {
    const char *stdin_path; /* NULL: /dev/null */
    long fsize;             /* > 0: the child's file size limit in bytes */
} nbt_run_opts;
int nbt_run_with(char *const argv[], const nbt_run_opts *o, char **out, char **err,
                 int timeout_s);

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

/* A program on a pseudo-terminal (100x30), its output collected in buf. */
typedef struct nbt_term {
    int fd;
    int pid;
    char buf[1 << 16];
    size_t len;
} nbt_term;
void nbt_term_start(nbt_term *t, char *const argv[]);
/* Read until `want` shows up in the output since `from`; returns its
 * offset.  The test fails (showing the screen's end) on timeout or EOF. */
size_t nbt_term_wait(nbt_term *t, size_t from, const char *want, int timeout_ms);
void nbt_term_send(nbt_term *t, const char *keys);
/* Keys for a line editor: first wait (up to 10 s) until it owns the
 * terminal (canonical mode off), as keys typed before that are the tty's. */
void nbt_term_edit(nbt_term *t, const char *keys);
/* Wait (up to 10 s, then SIGKILL and fail) for the program to exit, reading
 * its last output; its exit status, -1 when killed by a signal. */
int nbt_term_exit(nbt_term *t);

#endif
