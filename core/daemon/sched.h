/*
 * sched.h - nibd's scheduler: the model, its slots (one KV cache each) and
 * the worker thread that runs every generation request.
 */
#ifndef NIBD_SCHED_H
#define NIBD_SCHED_H

#include <stdatomic.h>
#include <stdint.h>

#include "protocol.h"

typedef struct nbd_options {
    const char *model;
    int threads;          /* 0: physical cores */
    int n_ctx;            /* per slot; 0: the model's, at most 4096 */
    int n_slots;
    double keep_alive;    /* seconds idle before the weights are released; < 0 never */
    int n_batch;          /* rows per forward pass */
    int prompt_chunk;     /* prompt tokens per slot per pass (fairness, cancel latency) */
    int log_level;        /* 0 error, 1 warn, 2 info, 3 debug */
    /* adapters loaded with the model, which requests name (--lora NAME=FILE) */
    int n_lora;
    const char *lora_name[NBD_MAX_LORA];
    const char *lora_path[NBD_MAX_LORA];
} nbd_options;

/* Where a job's events go.  The daemon's event loop implements it; the
 * scheduler only calls emit (from its worker thread) and release. */
struct nbd_job;
typedef struct nbd_sink {
    void (*emit)(struct nbd_sink *s, char *line);   /* takes the malloc'd line */
    /* the job has sent its final event and is about to be freed */
    void (*release)(struct nbd_sink *s, struct nbd_job *job);
} nbd_sink;

typedef struct nbd_job {
    nbd_request req;       /* owned */
    nbd_sink *sink;
    atomic_int cancelled;
    atomic_int finished;   /* its final event is on its way: no longer cancellable */
    double t_queued;
    const char *warning;   /* static text for the final event, or NULL */
    nb_infill_fit fit;     /* infill: what the prompt kept */
    struct nbd_job *next;  /* scheduler queue */
} nbd_job;

typedef struct nbd_sched nbd_sched;

/* Load the model (to check it) and start the worker.  NULL and a message on
 * failure. */
nbd_sched *nbd_sched_start(const nbd_options *o, char *err, size_t errlen);
/* Hand a job to the worker (takes ownership).  Returns 0, or -1 when the
 * queue is full (the caller answers "busy" and frees the job). */
int nbd_sched_submit(nbd_sched *s, nbd_job *job);
/* A job's cancelled flag was set: wake the worker so it notices. */
void nbd_sched_poke(nbd_sched *s);
/* The status object of doc/protocol.md (without "id"). */
json_t *nbd_sched_status(nbd_sched *s);
/* End every job with "cancelled", stop the worker, free everything. */
void nbd_sched_stop(nbd_sched *s);

/* Return freed heap memory to the system (malloc_trim where there is one). */
void nbd_give_back_memory(void);

/* Log a line on stderr at the given level (0..3). */
void nbd_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
extern int nbd_log_level;

#endif
