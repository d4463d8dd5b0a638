/* el_parallel.h: the one hook through which the core runs work on several threads.
 *
 * The core has no threads of its own (it runs on bare metal too). The heavy loops
 * (the rows of a matmul, the heads of attention) are written as tasks over a range of
 * items; the caller may hand the runtime a `run` function that splits the range over
 * a thread pool (firmware/apps/common/el_thread_pool.c on POSIX). Without one, or with
 * one worker, the task runs on the caller's thread as a plain loop.
 *
 * Every item is computed the same way whichever worker takes it and however the range
 * is split, so the thread count never changes a bit of the result.
 */
#ifndef EL_PARALLEL_H
#define EL_PARALLEL_H

/* Do items [begin, end). `worker` (0 .. n_workers-1) names per-worker scratch: no two
 * calls running at the same time get the same worker. */
typedef void (*el_task_fn)(void *ctx, int begin, int end, int worker);

/* Call fn on disjoint ranges covering [0, n_items), at most one range per worker at a
 * time, and return when all are done. */
typedef void (*el_parallel_run_fn)(void *pool, el_task_fn fn, void *ctx, int n_items);

typedef struct {
    el_parallel_run_fn run;  /* NULL: a plain loop on the caller's thread */
    void *pool;
    int n_workers;           /* the most workers `run` uses (>= 1); per-worker scratch is sized by it */
} el_parallel;

/* Run fn over [0, n_items) through p (NULL or no run: fn(ctx, 0, n_items, 0)). */
void el_parallel_for(const el_parallel *p, el_task_fn fn, void *ctx, int n_items);

#endif
