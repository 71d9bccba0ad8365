/*
 * threads.c - a persistent pool of worker threads for the forward pass.
 *
 * The pool is created with the context and lives as long as it.  A job is
 * one function run on every thread at once (the caller is thread 0); it
 * returns when all have finished.  A token of generation issues a few
 * hundred jobs of tens of microseconds each, so waking threads through the
 * kernel every time would cost more than the work: workers spin on a
 * generation counter for a while after each job and only then sleep on a
 * condition variable.
 *
 * Work is split by rows, and each row is always computed the same way by
 * whichever thread gets it, so results do not depend on the thread count.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

/* A waiting thread first spins (a few microseconds: the next job is usually
 * that close), then yields its core (when the machine is busier than our
 * thread count, the thread we wait for may need it), and a worker finally
 * sleeps after roughly a millisecond without work. */
#define SPIN_PAUSES 2000
#define SPIN_YIELDS 2000

struct nbi_pool {
    int n;                      /* threads including the caller */
    pthread_t *tids;
    int started;                /* workers actually created */
    _Atomic unsigned gen;       /* incremented for every job */
    _Atomic int pending;        /* workers still running the current job */
    _Atomic int sleepers;
    _Atomic int stop;
    nbi_task_fn fn;
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

typedef struct worker_arg {
    nbi_pool *p;
    int ith;
} worker_arg;

static void *worker(void *vp)
{
    worker_arg wa = *(worker_arg *)vp;
    free(vp);
    nbi_pool *p = wa.p;
    unsigned seen = 0;
    for (;;) {
        int spins = 0;
        unsigned g;
        while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop)) {
            if (++spins < SPIN_PAUSES) {
                cpu_relax();
                continue;
            }
            if (spins < SPIN_PAUSES + SPIN_YIELDS) {
                sched_yield();
                continue;
            }
            /* Announce the sleep before re-checking: the runner bumps gen
             * and then reads sleepers, so one of us sees the other. */
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->stop))
            break;
        seen = g;
        p->fn(p->arg, wa.ith, p->n);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
    return NULL;
}

nb_status nbi_pool_new(int n_threads, nbi_pool **out)
{
    *out = NULL;
    if (n_threads < 1 || n_threads > NBI_MAX_THREADS)
        return NB_ERR_INVALID;
    nbi_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NB_ERR_NOMEM;
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (n_threads > 1) {
        p->tids = calloc((size_t)n_threads, sizeof *p->tids);
        if (!p->tids) {
            nbi_pool_free(p);
            return NB_ERR_NOMEM;
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *wa = malloc(sizeof *wa);
            if (wa) {
                wa->p = p;
                wa->ith = i;
            }
            if (!wa || pthread_create(&p->tids[i], NULL, worker, wa) != 0) {
                free(wa);
                nbi_pool_free(p);
                return NB_ERR_NOMEM;
            }
            p->started = i;
        }
    }
    *out = p;
    return NB_OK;
}

void nbi_pool_free(nbi_pool *p)
{
    if (!p)
        return;
    atomic_store(&p->stop, 1);
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i <= p->started; i++)
        pthread_join(p->tids[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->tids);
    free(p);
}

int nbi_pool_size(const nbi_pool *p)
{
    return p ? p->n : 1;
}

void nbi_pool_run(nbi_pool *p, nbi_task_fn fn, void *arg)
{
    if (!p || p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->pending, p->n - 1);
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0, p->n);
    for (int spins = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; spins++) {
        if (spins < SPIN_PAUSES)
            cpu_relax();
        else
            sched_yield();
    }
}

/* Physical cores: count distinct core_cpus_list (or thread_siblings_list)
 * entries of the online CPUs; hyperthread siblings share one. */
int nb_physical_cores(void)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online < 1)
        return 1;
    char seen[256][64];
    int n_seen = 0;
    for (long cpu = 0; cpu < online && cpu < 4096; cpu++) {
        char path[128], buf[64] = "";
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%ld/topology/core_cpus_list", cpu);
        FILE *f = fopen(path, "r");
        if (!f) {
            snprintf(path, sizeof path,
                     "/sys/devices/system/cpu/cpu%ld/topology/thread_siblings_list", cpu);
            f = fopen(path, "r");
        }
        if (!f)
            return (int)NBI_MIN(online, NBI_MAX_THREADS);
        if (!fgets(buf, sizeof buf, f))
            buf[0] = 0;
        fclose(f);
        int dup = 0;
        for (int i = 0; i < n_seen && !dup; i++)
            dup = strcmp(seen[i], buf) == 0;
        if (!dup) {
            if (n_seen == 256)
                break;
            snprintf(seen[n_seen++], sizeof seen[0], "%s", buf);
        }
    }
    return n_seen > 0 ? NBI_MIN(n_seen, NBI_MAX_THREADS) : 1;
}
