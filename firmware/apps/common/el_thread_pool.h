/* el_thread_pool.h: the POSIX threads behind the core's parallel hook (el_parallel.h).
 *
 * A pool of n threads counts the caller as one of them: n - 1 pthreads wait for work,
 * spinning briefly (a decode step hands out work every few microseconds) and then
 * sleeping on a condition variable. Items are split into n equal contiguous ranges,
 * the caller taking the first.
 */
#ifndef EL_THREAD_POOL_H
#define EL_THREAD_POOL_H

#include "el_runtime.h"

typedef struct el_thread_pool el_thread_pool;

/* A pool of n_threads (1 .. 1024) including the caller; NULL when threads cannot be started. */
el_thread_pool *el_thread_pool_create(int n_threads);
void el_thread_pool_destroy(el_thread_pool *pool);
int el_thread_pool_size(const el_thread_pool *pool);
/* An el_parallel_run_fn: pool is an el_thread_pool. */
void el_thread_pool_run(void *pool, el_task_fn fn, void *ctx, int n_items);
/* Let the runtime's heavy loops use the pool (at most the threads it was opened for). */
el_status el_thread_pool_attach(el_thread_pool *pool, el_runtime *rt, el_error *err);
/* The number of online CPUs (at least 1): the default thread count on a host. */
int el_cpu_count(void);

#endif
