/* edgellama-run: the runtime as a POSIX program (host and Linux boards).
 *
 *   edgellama-run MODEL generate "PROMPT" [options]   stream the continuation to stdout
 *   edgellama-run MODEL chat [options]                multi-turn chat on stdin/stdout
 *   edgellama-run MODEL bench [options]               one JSON object of speed and memory figures
 *   edgellama-run MODEL serve [--serial DEV] [options] the framed protocol (firmware/PROTOCOL.md) on
 *                                                      stdin/stdout, or on a serial device (raw mode)
 *   edgellama-run MODEL logits [--prompt TEXT]         a digest of the logits at every prompt position
 *                                                      (to check that targets compute the same bits)
 *
 * Unlike the core, this file may use libc: the model is mmap'ed (weights are read in
 * place, never copied), the arena is one malloc'ed block, times come from
 * clock_gettime. Every error is one line "error: ..." on stderr and exit status 1.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "el_bench_prompt.h"
#include "el_protocol.h"
#include "el_runtime.h"
#include "el_thread_pool.h"

#define DEFAULT_MAX_TOKENS 128

static const char USAGE[] =
    "usage: edgellama-run MODEL generate \"PROMPT\" [options]\n"
    "       edgellama-run MODEL chat [options] [--system TEXT] [--template auto|plain|llama2|chatml]\n"
    "       edgellama-run MODEL bench [options] [--prompt TEXT] [--prompt-tokens N] [--gen-tokens N]\n"
    "                                 [--repetitions R] [--sequences N]\n"
    "       edgellama-run MODEL serve [--serial DEV] [options]   (the framed protocol, firmware/PROTOCOL.md)\n"
    "       edgellama-run MODEL logits [--prompt TEXT] [--prompt-tokens N]   (an FNV-1a digest of the logits)\n"
    "sampling: --temperature T --top-p P --top-k K --min-p M --repetition-penalty R\n"
    "          --frequency-penalty F --presence-penalty P --seed S --max-tokens N --min-tokens N\n"
    "          --stop STR (up to 4) --ignore-eos\n"
    "engine:   --block-size B --kv-dtype f32|int8 --arena-mb N --max-model-len N --max-batch-tokens N\n"
    "          --max-seqs N (sequences at once: a request's n samples, default 1)\n"
    "          --threads N (default: the board's, else every CPU)\n"
    "          --speculative-tokens K (drafts verified per step, 0-16: n-grams, or --draft-model's; fewer passes)\n"
    "          --prompt-lookup-max N --prompt-lookup-min N (the n-grams looked up; default 5 and the max)\n"
    "          --draft-model FILE (drafts from this smaller model with the same vocabulary instead of\n"
    "            n-grams: greedy tokens unchanged, sampled ones by the rejection rule)\n"
    "chat commands: /reset  /stats  /system TEXT  /help; end of input exits\n"
    "bench prints: model, model_bytes, prompt_tokens, gen_tokens, repetitions, load_ms,\n"
    "  prefill_tokens_per_s, decode_tokens_per_s, ttft_ms, tpot_ms (medians over repetitions),\n"
    "  sample_us (one el_sample call with the sampling options), kernels, threads, sequences,\n"
    "  tokens_generated, arena_bytes_used, arena_bytes_high_water, arena_bytes_size, max_rss_bytes,\n"
    "  kv_blocks_used, kv_blocks_total, kv_blocks_high_water, kv_blocks_cached, kv_block_size,\n"
    "  kv_dtype, prefix_queries, prefix_hits, preemptions, draft_tokens, draft_accepted, draft_rows\n";

/* ------------------------------------------------------------ errors */

static void die(const char *format, ...)
{
    va_list args;
    fflush(stdout);
    fputs("error: ", stderr);
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n == 0 ? 1 : n);
    if (p == NULL) die("out of memory (%zu bytes)", n);
    return p;
}

/* ------------------------------------------------------------ options */

/* --threads when not given: the board file's count, compiled in by `edgellama build`
 * (EL_DEFAULT_THREADS), else every CPU of the machine it runs on. */
static int default_threads(void)
{
#ifdef EL_DEFAULT_THREADS
    return EL_DEFAULT_THREADS;
#else
    return el_cpu_count();
#endif
}

typedef struct {
    const char *model_path, *mode, *prompt, *system, *template_name, *serial;
    const char *draft_path; /* --draft-model: speculative drafts from this model; NULL: n-grams */
    el_request request;
    el_engine_options engine;
    long arena_mb;
    int prompt_tokens, gen_tokens, repetitions, sequences, threads;
} options;

static long parse_long(const char *flag, const char *text, long low, long high)
{
    char *end;
    long value;
    errno = 0;
    value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || errno == ERANGE || value < low || value > high)
        die("%s needs an integer from %ld to %ld, got '%s'", flag, low, high, text);
    return value;
}

static float parse_float(const char *flag, const char *text)
{
    char *end;
    double value;
    errno = 0;
    value = strtod(text, &end);
    if (end == text || *end != '\0' || errno == ERANGE || !isfinite(value) || fabs(value) > 3.0e38)
        die("%s needs a number, got '%s'", flag, text);
    return (float)value;
}

static void add_stop(el_request *r, const char *text)
{
    size_t n = strlen(text);
    if (r->n_stop >= EL_MAX_STOP_STRINGS) die("--stop: at most %d stop strings", EL_MAX_STOP_STRINGS);
    if (n < 1 || n >= EL_MAX_STOP_LEN) die("--stop: each stop string must have 1 to %d bytes", EL_MAX_STOP_LEN - 1);
    memcpy(r->stop[r->n_stop], text, n + 1);
    r->stop_len[r->n_stop++] = (int)n;
}

/* Flags that take a value; returns 0 for a flag it does not know. */
static int sampling_flag(options *o, const char *flag, const char *v)
{
    el_sampling *s = &o->request.sampling;
    if (strcmp(flag, "--temperature") == 0) s->temperature = parse_float(flag, v);
    else if (strcmp(flag, "--top-p") == 0) s->top_p = parse_float(flag, v);
    else if (strcmp(flag, "--top-k") == 0) s->top_k = (int)parse_long(flag, v, -1, 1L << 30);
    else if (strcmp(flag, "--min-p") == 0) s->min_p = parse_float(flag, v);
    else if (strcmp(flag, "--repetition-penalty") == 0) s->repetition_penalty = parse_float(flag, v);
    else if (strcmp(flag, "--frequency-penalty") == 0) s->frequency_penalty = parse_float(flag, v);
    else if (strcmp(flag, "--presence-penalty") == 0) s->presence_penalty = parse_float(flag, v);
    else if (strcmp(flag, "--seed") == 0) s->seed = (uint64_t)parse_long(flag, v, 0, 0x7fffffffL);
    else if (strcmp(flag, "--max-tokens") == 0) o->request.max_tokens = (int)parse_long(flag, v, 1, 1L << 30);
    else if (strcmp(flag, "--min-tokens") == 0) o->request.min_tokens = (int)parse_long(flag, v, 0, 1L << 30);
    else if (strcmp(flag, "--stop") == 0) add_stop(&o->request, v);
    else return 0;
    return 1;
}

static int engine_flag(options *o, const char *flag, const char *v)
{
    el_engine_options *e = &o->engine;
    if (strcmp(flag, "--block-size") == 0) e->block_size = (int)parse_long(flag, v, 1, 4096);
    else if (strcmp(flag, "--max-model-len") == 0) e->max_model_len = (int)parse_long(flag, v, 1, 1L << 24);
    else if (strcmp(flag, "--max-batch-tokens") == 0) e->max_batch_tokens = (int)parse_long(flag, v, 1, 1L << 16);
    else if (strcmp(flag, "--max-seqs") == 0) e->max_seqs = (int)parse_long(flag, v, 1, 256);
    else if (strcmp(flag, "--arena-mb") == 0) o->arena_mb = parse_long(flag, v, 1, 1L << 20);
    else if (strcmp(flag, "--threads") == 0) o->threads = (int)parse_long(flag, v, 1, 1024);
    else if (strcmp(flag, "--speculative-tokens") == 0) e->speculative_tokens = (int)parse_long(flag, v, 0, 16);
    else if (strcmp(flag, "--prompt-lookup-max") == 0) e->prompt_lookup_max = (int)parse_long(flag, v, 1, 1024);
    else if (strcmp(flag, "--prompt-lookup-min") == 0) e->prompt_lookup_min = (int)parse_long(flag, v, 1, 1024);
    else if (strcmp(flag, "--draft-model") == 0) o->draft_path = v;
    else if (strcmp(flag, "--kv-dtype") == 0) {
        if (strcmp(v, "f32") == 0) e->kv_dtype = EL_KV_F32;
        else if (strcmp(v, "int8") == 0) e->kv_dtype = EL_KV_INT8;
        else die("--kv-dtype must be f32 or int8, got '%s'", v);
    } else return 0;
    return 1;
}

static int mode_flag(options *o, const char *flag, const char *v)
{
    if (strcmp(flag, "--system") == 0) o->system = v;
    else if (strcmp(flag, "--template") == 0) o->template_name = v;
    else if (strcmp(flag, "--prompt") == 0) o->prompt = v;
    else if (strcmp(flag, "--serial") == 0) o->serial = v;
    else if (strcmp(flag, "--prompt-tokens") == 0) o->prompt_tokens = (int)parse_long(flag, v, 1, 1L << 24);
    else if (strcmp(flag, "--gen-tokens") == 0) o->gen_tokens = (int)parse_long(flag, v, 2, 1L << 24);
    else if (strcmp(flag, "--repetitions") == 0) o->repetitions = (int)parse_long(flag, v, 1, 1000);
    else if (strcmp(flag, "--sequences") == 0) o->sequences = (int)parse_long(flag, v, 1, 256);
    else return 0;
    return 1;
}

static void set_defaults(options *o)
{
    memset(o, 0, sizeof *o);
    el_request_defaults(&o->request);
    o->request.max_tokens = DEFAULT_MAX_TOKENS;
    o->engine.max_seqs = 1; /* one conversation or prompt at a time; serve's n samples and beams want more */
    o->engine.kv_dtype = EL_KV_F32;
    o->engine.check_values = 1; /* a file from anywhere: refuse NaN/Inf weights at load */
    o->engine.weights_writable = 1; /* map_model's mapping is copy-on-write */
    o->template_name = "auto";
    o->prompt_tokens = 64;
    o->gen_tokens = 128;
    o->repetitions = 1;
    o->sequences = 1;
}

static int known_flag(const char *flag)
{
    static const char *const flags[] = {
        "--temperature", "--top-p", "--top-k", "--min-p", "--repetition-penalty", "--frequency-penalty",
        "--presence-penalty", "--seed", "--max-tokens", "--min-tokens", "--stop", "--block-size", "--max-model-len",
        "--max-batch-tokens", "--max-seqs", "--arena-mb", "--kv-dtype", "--system", "--template", "--prompt", "--prompt-tokens",
        "--gen-tokens", "--repetitions", "--serial", "--threads", "--sequences", "--speculative-tokens",
        "--prompt-lookup-max", "--prompt-lookup-min", "--draft-model"};
    size_t i;
    for (i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (strcmp(flag, flags[i]) == 0) return 1;
    return 0;
}

/* One argument at argv[*i]: a flag (with its value after it or after '='), or a positional. */
static void parse_one(options *o, int argc, char **argv, int *i, int *positional_only)
{
    char flag[64];
    const char *arg = argv[*i], *eq = strchr(arg, '='), *value;
    size_t n = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
    if (*positional_only || arg[0] != '-' || arg[1] == '\0') {
        if (strcmp(o->mode, "generate") != 0 || o->prompt != NULL) die("unexpected argument '%s'", arg);
        o->prompt = arg;
        return;
    }
    if (strcmp(arg, "--") == 0) {
        *positional_only = 1;
        return;
    }
    if (strcmp(arg, "--ignore-eos") == 0) {
        o->request.ignore_eos = 1;
        return;
    }
    if (n >= sizeof flag || strncmp(arg, "--", 2) != 0) die("unknown flag '%s' (see --help)", arg);
    memcpy(flag, arg, n);
    flag[n] = '\0';
    if (eq != NULL) value = eq + 1;
    else if (*i + 1 < argc) value = argv[++*i];
    else value = NULL;
    if (!known_flag(flag)) die("unknown flag '%s' (see --help)", flag);
    if (value == NULL) die("%s needs a value", flag);
    if (!(sampling_flag(o, flag, value) || engine_flag(o, flag, value) || mode_flag(o, flag, value)))
        die("unknown flag '%s' (see --help)", flag);
}

static void check_request(const el_request *r)
{
    el_error err;
    memset(&err, 0, sizeof err);
    if (el_request_check(r, &err) != EL_OK) die("%s", err.message);
}

static void parse_args(options *o, int argc, char **argv)
{
    int i, positional_only = 0;
    set_defaults(o);
    for (i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(USAGE, stdout);
            exit(0);
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("edgellama-run %s\n", el_runtime_version());
            exit(0);
        }
    if (argc < 3) die("usage: edgellama-run MODEL generate|chat|bench|serve [options] (see --help)");
    o->model_path = argv[1];
    o->mode = argv[2];
    if (strcmp(o->mode, "generate") != 0 && strcmp(o->mode, "chat") != 0 && strcmp(o->mode, "bench") != 0 &&
        strcmp(o->mode, "serve") != 0 && strcmp(o->mode, "logits") != 0)
        die("unknown mode '%s': use generate, chat, bench, serve or logits", o->mode);
    for (i = 3; i < argc; i++) parse_one(o, argc, argv, &i, &positional_only);
    if (o->threads == 0) o->threads = default_threads();
    o->engine.threads = o->threads;
    if (o->sequences > o->engine.max_seqs) o->engine.max_seqs = o->sequences;
    if (strcmp(o->mode, "generate") == 0 && o->prompt == NULL) die("generate needs a prompt");
    if (strcmp(o->template_name, "auto") != 0 && el_chat_template_from_name(o->template_name) < 0)
        die("--template must be auto, plain, llama2 or chatml, got '%s'", o->template_name);
    check_request(&o->request); /* sampling values are refused before the model is loaded */
}

/* ------------------------------------------------------------ the model and the runtime */

typedef struct {
    const uint8_t *data;
    size_t size;
} mapped_file;

static mapped_file map_model(const char *path)
{
    mapped_file m;
    struct stat st;
    void *p;
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("cannot open model '%s': %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) die("cannot read model '%s': %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) die("model '%s' is not a regular file", path);
    if (st.st_size == 0) die("model '%s' is empty", path);
    /* private and copy-on-write: the file never changes, and a matrix the kernels
     * rearrange at open (weights_writable) becomes this process's own pages, in place of
     * the page cache's, so the resident size stays the same */
    p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) die("cannot map model '%s': %s", path, strerror(errno));
    close(fd);
    m.data = (const uint8_t *)p;
    m.size = (size_t)st.st_size;
    return m;
}

typedef struct {
    mapped_file model, draft;  /* draft.data is NULL without --draft-model */
    void *memory, *draft_memory;
    size_t memory_size, draft_memory_size;
    el_runtime *rt;
    el_thread_pool *pool;  /* NULL with one thread */
    double load_ms;
} session;

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* (Re)opens the runtime inside the session's memory block: everything is reset. A
 * reopen maps the model afresh: the last runtime rearranged its matrices in place
 * (weights_writable), and a new one must start from the file's layout. */
static void open_runtime(session *s, const options *o)
{
    el_error err;
    double start = now_ms();
    memset(&err, 0, sizeof err);
    if (s->rt != NULL) {
        munmap((void *)s->model.data, s->model.size);
        s->model = map_model(o->model_path);
        if (o->draft_path != NULL) {
            munmap((void *)s->draft.data, s->draft.size);
            s->draft = map_model(o->draft_path);
        }
    }
    s->rt = el_runtime_open(s->memory, s->memory_size, s->model.data, s->model.size, &o->engine, &err);
    if (s->rt == NULL) die("%s: %s", o->model_path, err.message);
    if (o->draft_path != NULL &&
        el_runtime_set_draft(s->rt, s->draft_memory, s->draft_memory_size, s->draft.data, s->draft.size, &err) != EL_OK)
        die("%s: %s", o->draft_path, err.message);
    if (s->pool != NULL && el_thread_pool_attach(s->pool, s->rt, &err) != EL_OK) die("%s", err.message);
    s->load_ms = now_ms() - start;
}

static void open_session(session *s, const options *o)
{
    /* malloc'ed pages are touched only as the runtime carves them, so the default
     * size (room for a larger model's scratch) costs what is used; stats report that */
    s->model = map_model(o->model_path);
    s->memory_size = o->arena_mb > 0 ? (size_t)o->arena_mb << 20 : ((size_t)64 << 20) + s->model.size;
    s->rt = NULL;
    s->memory = xmalloc(s->memory_size);
    s->draft.data = NULL;
    s->draft_memory = NULL;
    if (o->draft_path != NULL) {
        s->draft = map_model(o->draft_path);
        s->draft_memory_size = ((size_t)64 << 20) + s->draft.size;
        s->draft_memory = xmalloc(s->draft_memory_size);
    }
    s->pool = NULL;
    if (o->threads > 1 && (s->pool = el_thread_pool_create(o->threads)) == NULL)
        die("cannot start %d threads", o->threads);
    open_runtime(s, o);
}

static void close_session(session *s)
{
    el_thread_pool_destroy(s->pool);
    free(s->memory);
    munmap((void *)s->model.data, s->model.size);
    if (s->draft.data != NULL) {
        free(s->draft_memory);
        munmap((void *)s->draft.data, s->draft.size);
    }
}

static int32_t *tokenize(el_runtime *rt, const char *text, size_t len, int *n)
{
    el_error err;
    int capacity;
    int32_t *tokens;
    if (len > 0x1FFFFFF) die("the prompt is too long (%zu bytes)", len);
    capacity = (int)el_tokenize_bound(len);
    tokens = (int32_t *)xmalloc(sizeof(int32_t) * (size_t)capacity);
    memset(&err, 0, sizeof err);
    *n = el_runtime_tokenize(rt, text, (int)len, 1, tokens, capacity, &err);
    if (*n < 0) die("%s", err.message);
    return tokens;
}

/* ------------------------------------------------------------ streaming */

static void write_text(const char *text, int len)
{
    if (len <= 0) return;
    fwrite(text, 1, (size_t)len, stdout);
    fflush(stdout);
}

/* A buffer for one step's events: el_runtime_max_events of them, so none is lost
 * (speculative decoding reports a token per accepted draft). */
static el_event *step_events(el_runtime *rt, int *capacity)
{
    static el_event *buffer;
    static int size;
    int want = el_runtime_max_events(rt);
    if (want > size) {
        free(buffer);
        buffer = (el_event *)malloc(sizeof(el_event) * (size_t)want);
        if (buffer == NULL) die("out of memory for %d events", want);
        size = want;
    }
    *capacity = size;
    return buffer;
}

/* Steps until sequence `seq` finishes, printing its text as it comes (when `print`).
 * Returns the finish reason; `first_ms` gets the time of its first event. */
static el_finish_reason run_sequence(el_runtime *rt, int seq, int print, double *first_ms)
{
    int n, i, max_events;
    el_event *events = step_events(rt, &max_events);
    for (;;) {
        n = el_runtime_step(rt, events, max_events);
        /* a step that only prefilled part of a long prompt samples nothing */
        if (n == 0 && el_engine_pending(&rt->engine) == 0) die("the engine stopped before the sequence finished");
        for (i = 0; i < n; i++) {
            if (events[i].seq_id != seq) continue;
            if (first_ms != NULL && *first_ms < 0) *first_ms = now_ms();
            if (print) write_text(events[i].text, events[i].text_len);
            if (events[i].finished) return events[i].finish;
        }
    }
}

/* ------------------------------------------------------------ generate */

static int run_generate(const options *o)
{
    session s;
    el_error err;
    int n, seq;
    int32_t *prompt;
    el_finish_reason finish;
    open_session(&s, o);
    prompt = tokenize(s.rt, o->prompt, strlen(o->prompt), &n);
    memset(&err, 0, sizeof err);
    if ((seq = el_runtime_add(s.rt, prompt, n, &o->request, &err)) < 0) die("%s", err.message);
    write_text(o->prompt, (int)strlen(o->prompt)); /* the prompt as given, then what follows it */
    finish = run_sequence(s.rt, seq, 1, NULL);
    if (finish == EL_FINISH_ABORT) die("the request was aborted (the KV pool is too small)");
    if (finish == EL_FINISH_ERROR) die("generation stopped: %s", EL_FINISH_ERROR_TEXT);
    if (isatty(STDOUT_FILENO)) fputc('\n', stdout); /* piped output stays exactly the text */
    free(prompt);
    close_session(&s);
    return 0;
}

/* ------------------------------------------------------------ chat */

typedef struct {
    session s;
    const options *o;
    int tmpl;
    int seq;            /* the conversation's sequence, -1 before the first turn */
    int turns;
    char *system;       /* owned copy; NULL for none */
    long long turn_new_tokens, turn_computed, turn_cached, turn_prompt_tokens;
} chat_state;

static void chat_reset(chat_state *c)
{
    if (c->seq >= 0) el_runtime_release(c->s.rt, c->seq); /* full blocks stay in the prefix cache */
    c->seq = -1;
    c->turns = 0;
    c->turn_new_tokens = c->turn_computed = c->turn_cached = c->turn_prompt_tokens = 0;
}

static void chat_set_system(chat_state *c, const char *text)
{
    free(c->system);
    c->system = NULL;
    if (text != NULL && *text != '\0') {
        c->system = (char *)xmalloc(strlen(text) + 1);
        strcpy(c->system, text);
    }
    chat_reset(c);
}

static void chat_stats(const chat_state *c)
{
    el_engine_stats st;
    const int32_t *tokens;
    int n_prompt = 0, n_cached = 0, n = c->seq >= 0 ? el_runtime_tokens(c->s.rt, c->seq, &tokens, &n_prompt, &n_cached) : 0;
    el_runtime_stats(c->s.rt, &st);
    printf("{\"template\": \"%s\", \"turns\": %d, \"sequence_tokens\": %d, \"turn_new_tokens\": %lld, "
           "\"turn_prompt_tokens\": %lld, \"turn_cached_tokens\": %lld, \"turn_computed_tokens\": %lld, "
           "\"prompt_tokens_computed\": %lld, \"tokens_generated\": %lld, \"kv_blocks_used\": %d, "
           "\"kv_blocks_total\": %d, \"kv_blocks_cached\": %d, \"prefix_hits\": %lld, \"arena_bytes_high_water\": %zu}\n",
           el_chat_template_name(c->tmpl), c->turns, n < 0 ? 0 : n, c->turn_new_tokens, c->turn_prompt_tokens,
           c->turn_cached, c->turn_computed, st.prompt_tokens_computed, st.tokens_generated, st.blocks_used,
           st.blocks_total, st.blocks_cached, st.prefix_hits, st.arena_high_water);
    fflush(stdout);
}

/* Admits the turn (el_runtime_chat_admit: continued, or started over when the
 * conversation filled the context). */
static int chat_admit(chat_state *c, const char *line, const el_request *r, el_error *err)
{
    size_t system_len = c->system != NULL ? strlen(c->system) : 0, len = strlen(line);
    int capacity = (int)(system_len + len) + 64; /* tokens <= bytes, plus the template's specials */
    const int32_t *all;
    int32_t *tokens;
    int seq, started_over, n_prompt, n_cached, before = 0;
    if (system_len + len > 0x1FFFFFF) die("the message is too long (%zu bytes)", len);
    if (c->seq >= 0) before = el_runtime_tokens(c->s.rt, c->seq, &all, &n_prompt, &n_cached);
    tokens = (int32_t *)xmalloc(sizeof(int32_t) * (size_t)capacity);
    seq = el_runtime_chat_admit(c->s.rt, c->tmpl, c->seq, c->system, (int)system_len, line, (int)len, tokens,
                                capacity, r, &started_over, err);
    free(tokens);
    if (started_over) {
        fprintf(stderr, "note: the conversation filled the context; starting over\n");
        c->seq = -1; /* released by the runtime */
        chat_reset(c);
    }
    if (seq < 0) return 0;
    c->seq = seq;
    el_runtime_tokens(c->s.rt, seq, &all, &n_prompt, &n_cached);
    c->turn_new_tokens = n_prompt - (started_over || before < 0 ? 0 : before); /* the turn's own tokens */
    return 1;
}

static void chat_turn(chat_state *c, const char *line)
{
    el_request r = c->o->request;
    el_error err;
    el_engine_stats before, after;
    const int32_t *tokens;
    int n_prompt, n_cached;
    el_finish_reason finish;
    memset(&err, 0, sizeof err);
    /* every turn with the request's own seed, as ChatSession and the serial protocol do, so a
     * sampled chat says the same on every target */
    if (el_runtime_chat_request(c->s.rt, c->tmpl, &r, &err) != EL_OK) die("%s", err.message);
    el_runtime_stats(c->s.rt, &before);
    if (!chat_admit(c, line, &r, &err)) {
        fprintf(stderr, "error: %s\n", err.message); /* the chat goes on; the line is dropped */
        return;
    }
    finish = run_sequence(c->s.rt, c->seq, 1, NULL);
    if (finish == EL_FINISH_ABORT) fprintf(stderr, "error: the turn was aborted\n");
    if (finish == EL_FINISH_ERROR) fprintf(stderr, "error: the turn stopped: %s\n", EL_FINISH_ERROR_TEXT);
    fputc('\n', stdout);
    fflush(stdout);
    el_runtime_stats(c->s.rt, &after);
    el_runtime_tokens(c->s.rt, c->seq, &tokens, &n_prompt, &n_cached);
    c->turn_computed = after.prompt_tokens_computed - before.prompt_tokens_computed;
    c->turn_cached = n_cached;
    c->turn_prompt_tokens = n_prompt;
    c->turns++;
}

/* A "/" command; returns 0 when the line is a message instead. */
static int chat_command(chat_state *c, const char *line)
{
    if (strcmp(line, "/reset") == 0) chat_reset(c);
    else if (strcmp(line, "/stats") == 0) chat_stats(c);
    else if (strcmp(line, "/help") == 0) fputs(USAGE, stdout);
    else if (strcmp(line, "/system") == 0) chat_set_system(c, NULL);
    else if (strncmp(line, "/system ", 8) == 0) chat_set_system(c, line + 8);
    else return 0;
    fflush(stdout);
    return 1;
}

static int run_chat(const options *o)
{
    chat_state c;
    char *line = NULL;
    size_t line_capacity = 0;
    ssize_t len;
    int interactive = isatty(STDIN_FILENO);
    memset(&c, 0, sizeof c);
    c.o = o;
    c.seq = -1;
    open_session(&c.s, o);
    c.tmpl = strcmp(o->template_name, "auto") == 0 ? (int)el_runtime_chat_template(c.s.rt)
                                                   : el_chat_template_from_name(o->template_name);
    chat_set_system(&c, o->system);
    if (interactive) fprintf(stderr, "chat (%s template): /reset /stats /system TEXT; Ctrl-D exits\n",
                             el_chat_template_name(c.tmpl));
    for (;;) {
        if (interactive) fputs("> ", stdout), fflush(stdout);
        if ((len = getline(&line, &line_capacity, stdin)) < 0) break;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (len == 0 || chat_command(&c, line)) continue;
        chat_turn(&c, line);
    }
    free(line);
    free(c.system);
    close_session(&c.s);
    return 0;
}

/* ------------------------------------------------------------ bench */

/* Bench call number `call`'s prompt of exactly `want` tokens: el_bench_prompt.h's rule,
 * the one the protocol's BENCH and Python's bench_prompt follow too. */
static int32_t *bench_prompt(el_runtime *rt, int want, uint32_t call)
{
    el_error err;
    int capacity = el_bench_prompt_room(want);
    int32_t *tokens = (int32_t *)xmalloc(sizeof(int32_t) * (size_t)capacity);
    memset(&err, 0, sizeof err);
    if (el_bench_prompt(rt, want, call, tokens, capacity, &err) != want) die("%s", err.message);
    return tokens;
}

/* FNV-1a over bytes: a digest (of logits, of tokens) that any machine computes the same way. */
static uint64_t fnv1a(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

typedef struct {
    double prefill_tps, decode_tps, ttft_ms, tpot_ms;
    uint64_t tokens_digest; /* FNV-1a of the first sequence's generated tokens */
} bench_run;

/* `sequences` copies of the prompt at once (the first gets the request's seed, the
 * others the next seeds), until each has generated max_tokens. Prefill runs until
 * every sequence has its first token; decode figures are aggregate over sequences. */
static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int n)
{
    qsort(values, (size_t)n, sizeof(double), compare_doubles);
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2.0;
}

static bench_run bench_once(el_runtime *rt, const int32_t *prompt, int n_prompt, const el_request *r, int sequences)
{
    int max_events;
    el_event *events = step_events(rt, &max_events);
    el_error err;
    el_request each = *r;
    bench_run b;
    double start, first = -1.0, end;
    int i, n, started = 0, finished = 0, first_seq = 0, n_all, n_prompt_of, n_cached;
    const int32_t *all;
    memset(&err, 0, sizeof err);
    start = now_ms();
    for (i = 0; i < sequences; i++) {
        each.sampling.seed = r->sampling.seed + (uint64_t)i;
        if ((n = el_runtime_add(rt, prompt, n_prompt, &each, &err)) < 0) die("%s", err.message);
        if (i == 0) first_seq = n;
    }
    while (finished < sequences) {
        n = el_runtime_step(rt, events, max_events);
        if (n == 0 && el_runtime_pending(rt) == 0) die("the engine stopped before the bench finished");
        for (i = 0; i < n; i++) {
            const el_sequence *seq = el_engine_sequence(&rt->engine, events[i].seq_id);
            if (seq->n_tokens - seq->n_prompt == 1 && ++started == sequences) first = now_ms();
            if (events[i].finished) {
                if (events[i].finish == EL_FINISH_ABORT) die("a bench request was aborted");
                if (events[i].finish == EL_FINISH_ERROR) die("a bench request stopped: %s", EL_FINISH_ERROR_TEXT);
                finished++;
            }
        }
    }
    end = now_ms();
    n_all = el_runtime_tokens(rt, first_seq, &all, &n_prompt_of, &n_cached);
    b.tokens_digest = fnv1a(14695981039346656037ull, all + n_prompt_of, sizeof(int32_t) * (size_t)(n_all - n_prompt_of));
    b.ttft_ms = first - start;
    b.prefill_tps = (double)n_prompt * sequences / ((first - start) / 1e3);
    b.tpot_ms = (end - first) / (r->max_tokens - 1);
    b.decode_tps = (double)(r->max_tokens - 1) * sequences / ((end - first) / 1e3);
    return b;
}

/* Microseconds of one el_sample call with the request's sampling options, on real
 * logits (those after the prompt's first tokens: few, so the bench's peak memory stays
 * the generation's): the median of repeated calls. */
static double bench_sampler(el_runtime *rt, const int32_t *prompt, int n_prompt, const el_request *r)
{
    enum { CALLS = 101, POSITIONS = 4 };
    const el_config *c = el_runtime_config(rt);
    size_t vocab = (size_t)c->vocab_size, arena_bytes = vocab * 16 + 65536;
    int positions = n_prompt < POSITIONS ? n_prompt : POSITIONS;
    float *logits = (float *)xmalloc(sizeof(float) * vocab * (size_t)positions);
    float *work = (float *)xmalloc(sizeof(float) * vocab);
    void *memory = xmalloc(arena_bytes);
    double times[CALLS], result;
    el_arena arena;
    el_sampler_scratch scratch;
    el_error err;
    el_rng rng;
    int i;
    memset(&err, 0, sizeof err);
    if (el_runtime_logits(rt, prompt, positions, logits, &err) != EL_OK) die("%s", err.message);
    el_arena_init(&arena, memory, arena_bytes);
    if (el_sampler_scratch_init(&scratch, c->vocab_size, &arena, &err) != EL_OK) die("%s", err.message);
    el_rng_seed(&rng, r->sampling.seed);
    for (i = 0; i < CALLS; i++) {
        double t0;
        memcpy(work, logits + vocab * (size_t)(positions - 1), sizeof(float) * vocab);
        t0 = now_ms();
        el_sample(&r->sampling, work, prompt, positions, NULL, 0, &rng, &scratch);
        times[i] = (now_ms() - t0) * 1e3;
    }
    result = median(times, CALLS);
    free(logits), free(work), free(memory);
    return result;
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

/* The most memory this program has had resident. Linux's VmHWM belongs to this
 * program alone; getrusage's ru_maxrss also counts the parent that started it (a
 * Python process of 200 MB makes every child look that big), so it is the fallback. */
static long long max_rss_bytes(void)
{
    struct rusage usage;
    char line[128];
    long long kib = -1;
    FILE *status = fopen("/proc/self/status", "r");
    if (status != NULL) {
        while (fgets(line, sizeof line, status) != NULL)
            if (strncmp(line, "VmHWM:", 6) == 0) kib = strtoll(line + 6, NULL, 10);
        fclose(status);
    }
    if (kib >= 0) return kib * 1024;
    return getrusage(RUSAGE_SELF, &usage) == 0 ? (long long)usage.ru_maxrss * 1024 : -1;
}

static void print_bench(const options *o, const session *s, int n_prompt, double *v[4], double sample_us,
                        long long rss, const el_engine_stats *st, uint64_t tokens_digest)
{
    int n = o->repetitions;
    printf("{\"model\": ");
    print_json_string(o->model_path);
    printf(", \"model_bytes\": %zu, \"runtime_version\": \"%s\", \"prompt_tokens\": %d, \"gen_tokens\": %d, "
           "\"repetitions\": %d, \"load_ms\": %.3f, ",
           s->model.size, el_runtime_version(), n_prompt, o->gen_tokens, n, s->load_ms);
    printf("\"prefill_tokens_per_s\": %.3f, \"decode_tokens_per_s\": %.3f, \"ttft_ms\": %.3f, \"tpot_ms\": %.3f, ",
           median(v[0], n), median(v[1], n), median(v[2], n), median(v[3], n));
    printf("\"sample_us\": %.3f, \"kernels\": \"%s\", \"threads\": %d, \"sequences\": %d, \"max_rss_bytes\": %lld, ",
           sample_us, el_kernels_name(), o->threads, o->sequences, rss);
    printf("\"tokens_generated\": %lld, \"arena_bytes_used\": %zu, \"arena_bytes_high_water\": %zu, "
           "\"arena_bytes_size\": %zu, ",
           st->tokens_generated, st->arena_used, st->arena_high_water, st->arena_size);
    printf("\"kv_blocks_used\": %d, \"kv_blocks_total\": %d, \"kv_blocks_high_water\": %d, \"kv_blocks_cached\": %d, "
           "\"kv_block_size\": %d, \"kv_dtype\": \"%s\", ",
           st->blocks_used, st->blocks_total, st->blocks_high_water, st->blocks_cached,
           o->engine.block_size > 0 ? o->engine.block_size : 16, o->engine.kv_dtype == EL_KV_INT8 ? "int8" : "f32");
    printf("\"prefix_queries\": %lld, \"prefix_hits\": %lld, \"preemptions\": %lld, ", st->prefix_queries,
           st->prefix_hits, st->preemptions);
    printf("\"speculative_tokens\": %d, \"draft_model\": ", o->engine.speculative_tokens);
    if (o->draft_path != NULL) print_json_string(o->draft_path);
    else printf("null");
    printf(", \"draft_tokens\": %lld, \"draft_accepted\": %lld, \"draft_rows\": %lld, \"tokens_fnv1a64\": \"%016llx\"}\n",
           st->draft_tokens, st->draft_accepted, st->draft_rows, (unsigned long long)tokens_digest);
}

static int run_bench(const options *o)
{
    session s;
    el_request r = o->request;
    el_engine_stats st;
    int32_t *prompt;
    int n_prompt, i, context;
    long long rss;
    double *v[4], load_ms;
    bench_run b;
    open_session(&s, o);
    context = o->engine.max_model_len > 0 ? o->engine.max_model_len : el_runtime_config(s.rt)->context_length;
    if (o->prompt != NULL) prompt = tokenize(s.rt, o->prompt, strlen(o->prompt), &n_prompt);
    else prompt = bench_prompt(s.rt, n_prompt = o->prompt_tokens, 1);
    if (n_prompt + o->gen_tokens > context)
        die("%d prompt tokens + %d generated tokens exceed the context of %d", n_prompt, o->gen_tokens, context);
    r.max_tokens = o->gen_tokens;
    r.min_tokens = 0;
    r.ignore_eos = 1; /* every repetition generates exactly gen_tokens */
    r.n_stop = r.n_stop_token_ids = 0;
    for (i = 0; i < 4; i++) v[i] = (double *)xmalloc(sizeof(double) * (size_t)o->repetitions);
    load_ms = s.load_ms; /* the first open: the one a user waits for */
    for (i = 0; i < o->repetitions; i++) {
        if (i > 0) {
            open_runtime(&s, o); /* a fresh cache: no prefix hits from the previous run */
            /* and repetition i is bench call i + 1, as a board's BENCH calls count */
            if (o->prompt == NULL) free(prompt), prompt = bench_prompt(s.rt, n_prompt, (uint32_t)i + 1);
        }
        b = bench_once(s.rt, prompt, n_prompt, &r, o->sequences);
        v[0][i] = b.prefill_tps, v[1][i] = b.decode_tps, v[2][i] = b.ttft_ms, v[3][i] = b.tpot_ms;
    }
    el_runtime_stats(s.rt, &st);
    rss = max_rss_bytes(); /* the generation's peak, before the sampler's own measurement */
    s.load_ms = load_ms;
    open_runtime(&s, o); /* after the stats: the sampler's logits come from a fresh cache */
    print_bench(o, &s, n_prompt, v, bench_sampler(s.rt, prompt, n_prompt, &r), rss, &st, b.tokens_digest);
    for (i = 0; i < 4; i++) free(v[i]);
    free(prompt);
    close_session(&s);
    return 0;
}

/* ------------------------------------------------------------ logits */

/* The logits at every position of the prompt (default: the bench's 64 tokens), as
 * one JSON line with their FNV-1a 64 digest and each position's argmax. */
static int run_logits(const options *o)
{
    session s;
    el_error err;
    const el_config *c;
    int32_t *prompt;
    float *logits;
    int n, i, k;
    uint64_t h = 14695981039346656037ull;
    open_session(&s, o);
    c = el_runtime_config(s.rt);
    if (o->prompt != NULL) prompt = tokenize(s.rt, o->prompt, strlen(o->prompt), &n);
    else prompt = bench_prompt(s.rt, n = o->prompt_tokens, 1);
    logits = (float *)xmalloc(sizeof(float) * (size_t)c->vocab_size * (size_t)n);
    memset(&err, 0, sizeof err);
    if (el_runtime_logits(s.rt, prompt, n, logits, &err) != EL_OK) die("%s", err.message);
    h = fnv1a(h, logits, sizeof(float) * (size_t)c->vocab_size * (size_t)n);
    printf("{\"positions\": %d, \"kernels\": \"%s\", \"threads\": %d, \"logits_fnv1a64\": \"%016llx\", \"argmax\": [",
           n, el_kernels_name(), o->threads, (unsigned long long)h);
    for (i = 0; i < n; i++) {
        const float *row = logits + (size_t)i * (size_t)c->vocab_size;
        int best = 0;
        for (k = 1; k < c->vocab_size; k++)
            if (row[k] > row[best]) best = k;
        printf("%s%d", i > 0 ? ", " : "", best);
    }
    printf("]}\n");
    free(logits);
    free(prompt);
    close_session(&s);
    return 0;
}

/* ------------------------------------------------------------ serve */

typedef struct {
    int in_fd, out_fd;
    unsigned char buf[4096];
    int len, at;
} serve_port;

static int serve_read(void *user, int wait_ms)
{
    serve_port *p = (serve_port *)user;
    struct pollfd pfd;
    ssize_t n;
    int r;
    while (p->at >= p->len) {
        pfd.fd = p->in_fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        r = poll(&pfd, 1, wait_ms);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -2;
        if (r == 0) return -1;
        n = read(p->in_fd, p->buf, sizeof p->buf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) return -2; /* end of input: the host closed its end */
        p->len = (int)n;
        p->at = 0;
    }
    return p->buf[p->at++];
}

static void serve_write(void *user, const uint8_t *data, int n)
{
    serve_port *p = (serve_port *)user;
    ssize_t w;
    while (n > 0) {
        w = write(p->out_fd, data, (size_t)n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return; /* the host is gone: what is left is dropped */
        data += w;
        n -= (int)w;
    }
}

static uint64_t serve_now_us(void *user)
{
    struct timespec t;
    (void)user;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

/* VmHWM of /proc/self/status (peak resident memory), in bytes; -1 when not there. */
static long long serve_rss(void *user)
{
    char line[256];
    long long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    (void)user;
    if (f == NULL) return -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = strtoll(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* A serial device in raw mode: 8 bits, no echo, no line editing, no flow translation. */
static int open_serial(const char *path)
{
    struct termios t;
    int fd = open(path, O_RDWR | O_NOCTTY);
    if (fd < 0) die("cannot open serial device '%s': %s", path, strerror(errno));
    if (tcgetattr(fd, &t) == 0) {
        t.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON | IXOFF);
        t.c_oflag &= ~(tcflag_t)OPOST;
        t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
        t.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
        t.c_cflag |= (tcflag_t)(CS8 | CREAD | CLOCAL);
        t.c_cc[VMIN] = 1;
        t.c_cc[VTIME] = 0;
        if (tcsetattr(fd, TCSANOW, &t) != 0) die("cannot set raw mode on '%s': %s", path, strerror(errno));
    }
    return fd;
}

static int run_serve(const options *o)
{
    session s;
    serve_port port;
    el_serve_io io;
    memset(&port, 0, sizeof port);
    memset(&io, 0, sizeof io);
    signal(SIGPIPE, SIG_IGN); /* a host that goes away is an end of input, not a signal */
    open_session(&s, o);
    if (o->serial != NULL) port.in_fd = port.out_fd = open_serial(o->serial);
    else port.in_fd = STDIN_FILENO, port.out_fd = STDOUT_FILENO;
    io.user = &port;
    io.read = serve_read;
    io.write = serve_write;
    io.now_us = serve_now_us;
    io.rss_bytes = serve_rss;
    io.board = "posix";
    io.default_max_tokens = o->request.max_tokens;
    el_serve(s.rt, &io);
    if (o->serial != NULL) close(port.in_fd);
    close_session(&s);
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    parse_args(&o, argc, argv);
    if (strcmp(o.mode, "generate") == 0) return run_generate(&o);
    if (strcmp(o.mode, "chat") == 0) return run_chat(&o);
    if (strcmp(o.mode, "serve") == 0) return run_serve(&o);
    if (strcmp(o.mode, "logits") == 0) return run_logits(&o);
    return run_bench(&o);
}
