/*
 * threads.c - a persistent pool of worker threads for the forward pass.
 *
 * The pool is created with the context and lives as long as it.  A job is
 * one function run on every thread at once (the caller is thread 0); it
 * returns when all have finished.  A token of generation issues about a
 * hundred jobs of tens to hundreds of microseconds each, so waking threads
 * through the kernel every time would cost more than the work: workers
 * spin on a generation counter for a while after each job and only then
 * sleep on a condition variable.
 *
 * Synchronisation.  The caller stores the job (fn, arg, and for a chunked
 * job every thread's share), sets `pending` to the number of workers and
 * increments `gen`; both are sequentially consistent, so a worker that
 * sees the new gen sees the job.  A worker runs it and decrements pending
 * with release order; the caller, after its own part, spins until pending
 * is zero with acquire order, so everything the workers wrote is visible
 * when nbi_pool_run returns.  Sleeping is announced in `sleepers` under
 * the mutex before re-checking gen, and the caller reads sleepers after
 * bumping gen, so a wake-up cannot be lost.
 *
 * Chunked jobs (nbi_pool_run_chunked).  Splitting a matrix product evenly
 * is not enough: the two threads of a generation step stream their halves
 * from memory at rates that differ from job to job (and a thread may lose
 * its core to another process), and with a fixed split the faster one
 * waits - measured at 2 threads, about a tenth of the step.  So each job
 * is cut into chunks, and each thread owns a contiguous share of them
 * that it claims front to back with an atomic add on its own counter (a
 * cache line of its own, so claiming costs no traffic while the shares
 * last, and each thread's reads stay one sequential stream for the
 * prefetchers).  A thread that runs out claims the next chunks of the
 * other shares in the same way, so work moves to whoever is ahead and
 * every chunk is claimed exactly once.  Claims need only atomicity
 * (relaxed); the results are published by the job's end as above.
 *
 * Work is split by rows (or other items) whose computation does not depend
 * on the thread that runs them or on the chunk they fall in, so results do
 * not depend on the thread count.
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

/* One thread's share of a chunked job, alone on its cache line: its owner
 * claims chunks from it at every step, and nobody else touches it until
 * they have run out of their own. */
typedef struct share {
    _Alignas(64) _Atomic int64_t next; /* first unclaimed item */
    int64_t end;
} share;

struct nbi_pool {
    int n;                      /* threads including the caller */
    share *shares;              /* (n) for nbi_pool_run_chunked */
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
    p->shares = aligned_alloc(_Alignof(share), (size_t)n_threads * sizeof(share));
    if (!p->shares) {
        free(p);
        return NB_ERR_NOMEM;
    }
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
    free(p->shares);
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

typedef struct chunked_job {
    nbi_pool *p;
    int64_t chunk;
    nbi_range_fn fn;
    void *arg;
} chunked_job;

static void chunked_task(void *arg, int ith, int nth)
{
    const chunked_job *j = arg;
    for (int k = 0; k < nth; k++) {
        share *s = &j->p->shares[(ith + k) % nth];
        int64_t lo;
        while ((lo = atomic_fetch_add_explicit(&s->next, j->chunk, memory_order_relaxed)) < s->end)
            j->fn(j->arg, lo, NBI_MIN(lo + j->chunk, s->end), ith);
    }
}

void nbi_pool_run_chunked(nbi_pool *p, int64_t n, int64_t chunk, nbi_range_fn fn, void *arg)
{
    if (n <= 0)
        return;
    if (!p || p->n == 1) {
        fn(arg, 0, n, 0);
        return;
    }
    /* shares of whole chunks, so that every chunk starts at a multiple of
     * `chunk` whoever claims it */
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    for (int i = 0; i < p->n; i++) {
        int64_t lo, hi;
        nbi_split(n_chunks, i, p->n, &lo, &hi);
        atomic_store_explicit(&p->shares[i].next, lo * chunk, memory_order_relaxed);
        p->shares[i].end = NBI_MIN(hi * chunk, n);
    }
    chunked_job j = {p, chunk, fn, arg};
    nbi_pool_run(p, chunked_task, &j);
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
