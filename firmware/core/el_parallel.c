/* el_parallel.c: the plain loop behind el_parallel_for when no pool is attached. */
#include "el_parallel.h"

#include <stddef.h>

void el_parallel_for(const el_parallel *p, el_task_fn fn, void *ctx, int n_items)
{
    if (n_items <= 0) return;
    if (p == NULL || p->run == NULL || p->n_workers <= 1 || n_items == 1) fn(ctx, 0, n_items, 0);
    else p->run(p->pool, fn, ctx, n_items);
}
