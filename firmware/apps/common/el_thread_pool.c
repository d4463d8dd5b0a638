/* el_thread_pool.c: a small spin-then-sleep pthread pool for el_parallel_for. */
#define _POSIX_C_SOURCE 200809L
#include "el_thread_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

/* About a millisecond of polling before a worker sleeps: the gap between two matmuls
 * of a decode step is far shorter, the gap between two user requests far longer. */
#define EL_SPIN_LIMIT 200000
/* Every so many polls a waiting thread yields its CPU: when the machine has fewer free
 * cores than threads (other programs running), the thread being waited for gets to run
 * instead of losing a whole scheduler slice to the spinning one. */
#define EL_SPINS_PER_YIELD 256

struct el_thread_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    /* the job of the current generation (written before the generation is bumped) */
    el_task_fn fn;
    void *ctx;
    int n_items;
    /* shared counters, read and written with __atomic builtins */
    unsigned generation;
    int pending;
    int sleeping;
    int stop;
};

typedef struct {
    el_thread_pool *pool;
    int worker;
} worker_arg;

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#elif defined(__aarch64__) || (defined(__arm__) && defined(__ARM_ARCH) && __ARM_ARCH >= 7)
    __asm__ __volatile__("yield");
#endif
}

static void wait_a_little(int spins)
{
    if (spins % EL_SPINS_PER_YIELD == 0) sched_yield();
    else cpu_relax();
}

/* Worker w's share of [0, n): n split into equal contiguous ranges. */
static void run_share(el_thread_pool *p, int w)
{
    int begin = (int)((long long)p->n_items * w / p->n_threads);
    int end = (int)((long long)p->n_items * (w + 1) / p->n_threads);
    if (end > begin) p->fn(p->ctx, begin, end, w);
}

/* Wait until the generation moves past `seen`; returns the new one. */
static unsigned wait_for_work(el_thread_pool *p, unsigned seen)
{
    unsigned gen;
    int spins = 0;
    while ((gen = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE)) == seen) {
        if (++spins < EL_SPIN_LIMIT) {
            wait_a_little(spins);
            continue;
        }
        pthread_mutex_lock(&p->lock);
        p->sleeping++;
        while (__atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen) pthread_cond_wait(&p->wake, &p->lock);
        p->sleeping--;
        pthread_mutex_unlock(&p->lock);
        spins = 0;
    }
    return gen;
}

static void *worker_main(void *arg)
{
    worker_arg *a = (worker_arg *)arg;
    el_thread_pool *p = a->pool;
    int w = a->worker;
    unsigned seen = 0;
    free(a);
    for (;;) {
        seen = wait_for_work(p, seen);
        if (__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) return NULL;
        run_share(p, w);
        __atomic_fetch_sub(&p->pending, 1, __ATOMIC_ACQ_REL);
    }
}

/* Publish a new generation (the job or the stop flag was written before). */
static void bump_generation(el_thread_pool *p)
{
    pthread_mutex_lock(&p->lock);
    __atomic_fetch_add(&p->generation, 1u, __ATOMIC_ACQ_REL);
    if (p->sleeping > 0) pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
}

el_thread_pool *el_thread_pool_create(int n_threads)
{
    el_thread_pool *p;
    int i;
    if (n_threads < 1 || n_threads > 1024) return NULL;
    p = (el_thread_pool *)calloc(1, sizeof *p);
    if (p == NULL) return NULL;
    p->threads = (pthread_t *)calloc((size_t)n_threads, sizeof(pthread_t));
    if (p->threads == NULL) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->n_threads = 1;
    for (i = 1; i < n_threads; i++) {
        worker_arg *a = (worker_arg *)malloc(sizeof *a);
        if (a == NULL) break;
        a->pool = p;
        a->worker = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, a) != 0) {
            free(a);
            break;
        }
        p->n_threads++;
    }
    if (p->n_threads < n_threads) {
        el_thread_pool_destroy(p);
        return NULL;
    }
    return p;
}

void el_thread_pool_destroy(el_thread_pool *p)
{
    int i;
    if (p == NULL) return;
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    bump_generation(p);
    for (i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p->threads);
    free(p);
}

int el_thread_pool_size(const el_thread_pool *p) { return p->n_threads; }

void el_thread_pool_run(void *pool, el_task_fn fn, void *ctx, int n_items)
{
    el_thread_pool *p = (el_thread_pool *)pool;
    int spins;
    if (p->n_threads == 1) {
        fn(ctx, 0, n_items, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_items = n_items;
    __atomic_store_n(&p->pending, p->n_threads - 1, __ATOMIC_RELEASE);
    bump_generation(p);
    run_share(p, 0);
    for (spins = 1; __atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0; spins++) wait_a_little(spins);
}

el_status el_thread_pool_attach(el_thread_pool *pool, el_runtime *rt, el_error *err)
{
    if (pool == NULL) return el_runtime_set_parallel(rt, NULL, NULL, 1, err);
    return el_runtime_set_parallel(rt, el_thread_pool_run, pool, pool->n_threads, err);
}

int el_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
}
