/*
 * test_threads.c - the worker pool: every thread runs every job exactly
 * once, the caller waits for all of them, workers that fell asleep wake
 * up, chunked jobs cover every item once in aligned chunks, and pools come
 * and go without leaking threads.
 */
#include "testutil.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

typedef struct job {
    _Atomic int calls;
    _Atomic long sum;
    int seen[64];
    atomic_int nth_seen;  /* every thread stores it */
    long *slots;
    int64_t n;
} job;

static void count_task(void *arg, int ith, int nth)
{
    job *j = arg;
    atomic_fetch_add(&j->calls, 1);
    j->seen[ith]++;
    atomic_store(&j->nth_seen, nth);
    int64_t lo, hi;
    nbi_split(j->n, ith, nth, &lo, &hi);
    for (int64_t i = lo; i < hi; i++)
        j->slots[i] += i; /* each slot written by exactly one thread */
}

static void run_many(int threads, int rounds, int nap_every)
{
    nbi_pool *p;
    assert_int_equal(nbi_pool_new(threads, &p), NB_OK);
    assert_int_equal(nbi_pool_size(p), threads);
    job j;
    memset(&j, 0, sizeof j);
    j.n = 1000;
    j.slots = calloc((size_t)j.n, sizeof *j.slots);
    for (int r = 0; r < rounds; r++) {
        if (nap_every && r % nap_every == 0) {
            /* long enough for workers to stop spinning and sleep */
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        nbi_pool_run(p, count_task, &j);
        /* the run has finished on every thread when it returns */
        assert_int_equal(atomic_load(&j.calls), (r + 1) * threads);
    }
    assert_int_equal(atomic_load(&j.nth_seen), threads);
    for (int t = 0; t < threads; t++)
        assert_int_equal(j.seen[t], rounds);
    for (int64_t i = 0; i < j.n; i++)
        assert_int_equal(j.slots[i], i * rounds);
    free(j.slots);
    nbi_pool_free(p);
}

static void test_pool_counts(void **state)
{
    (void)state;
    run_many(1, 100, 0);
    run_many(2, 5000, 0);
    run_many(4, 500, 0);
    run_many(7, 100, 0);
}

static void test_pool_wakes_sleepers(void **state)
{
    (void)state;
    run_many(2, 40, 2);
    run_many(5, 20, 1);
}

static void test_pool_lifecycle(void **state)
{
    (void)state;
    for (int i = 0; i < 50; i++) {
        nbi_pool *p;
        assert_int_equal(nbi_pool_new(1 + i % 4, &p), NB_OK);
        nbi_pool_free(p);
    }
    nbi_pool *p = (nbi_pool *)1;
    assert_int_equal(nbi_pool_new(0, &p), NB_ERR_INVALID);
    assert_null(p);
    assert_int_equal(nbi_pool_new(NBI_MAX_THREADS + 1, &p), NB_ERR_INVALID);
    nbi_pool_free(NULL);
}

static void test_split(void **state)
{
    (void)state;
    for (int64_t n = 0; n < 40; n++)
        for (int nth = 1; nth < 9; nth++) {
            int64_t next = 0;
            for (int ith = 0; ith < nth; ith++) {
                int64_t lo, hi;
                nbi_split(n, ith, nth, &lo, &hi);
                assert_int_equal(lo, next);
                assert_true(hi >= lo && hi - lo <= n / nth + 1 && hi - lo >= n / nth);
                next = hi;
            }
            assert_int_equal(next, n);
        }
}

typedef struct chunk_job {
    int64_t n, chunk;
    _Atomic int *hits; /* (n) */
    _Atomic int bad;
} chunk_job;

static void chunk_task(void *arg, int64_t lo, int64_t hi, int ith)
{
    chunk_job *j = arg;
    if (lo % j->chunk != 0 || hi <= lo || hi - lo > j->chunk || hi > j->n ||
        (hi - lo < j->chunk && hi != j->n) || ith < 0)
        atomic_store(&j->bad, 1);
    for (int64_t i = lo; i < hi && i < j->n; i++)
        atomic_fetch_add(&j->hits[i], 1);
    if ((lo / j->chunk) % 3 == ith % 3) { /* uneven threads: some chunks are slow */
        struct timespec ts = {0, 20 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void test_pool_chunked(void **state)
{
    (void)state;
    for (int threads = 1; threads <= 4; threads++) {
        nbi_pool *p;
        assert_int_equal(nbi_pool_new(threads, &p), NB_OK);
        for (int64_t n = 0; n < 200; n += 7)
            for (int64_t chunk = 1; chunk <= 64; chunk *= 4) {
                chunk_job j = {.n = n, .chunk = threads == 1 ? NBI_MAX(n, 1) : chunk};
                j.hits = calloc((size_t)(n ? n : 1), sizeof *j.hits);
                nbi_pool_run_chunked(p, n, chunk, chunk_task, &j);
                assert_int_equal(atomic_load(&j.bad), 0);
                for (int64_t i = 0; i < n; i++)
                    assert_int_equal(atomic_load(&j.hits[i]), 1);
                free(j.hits);
            }
        nbi_pool_free(p);
    }
}

static void test_physical_cores(void **state)
{
    (void)state;
    int n = nb_physical_cores();
    assert_true(n >= 1 && n <= NBI_MAX_THREADS);
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    assert_true(n <= online);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_counts),  cmocka_unit_test(test_pool_wakes_sleepers),
        cmocka_unit_test(test_pool_lifecycle), cmocka_unit_test(test_pool_chunked),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_physical_cores),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
