/* qemu_insn_count: a QEMU TCG plugin that counts the guest instructions a program executes.
 *
 *   qemu-aarch64 -plugin ./qemu_insn_count.so,out=COUNT_FILE PROGRAM ARGS...
 *
 * At translation time each translated block gets an inline "add its instruction count
 * to the counter" op, so every execution of the block adds exactly the number of guest
 * instructions in it: the count is exact and the same on every run of the same program
 * with the same input. At exit the total is written as one decimal line to COUNT_FILE
 * (and through qemu_plugin_outs, which QEMU prints with -d plugin).
 *
 * Debian's QEMU 7.2 supports -plugin but ships no qemu-plugin.h, so the few functions and
 * types of QEMU's documented plugin API used here are declared below as 7.2 defines them.
 * The counter is a plain 64-bit add, which is exact for single-threaded guests (all of
 * edgellama's programs); the host side of this file may use libc.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* ---- from QEMU 7.2 include/qemu/qemu-plugin.h ---- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* only passed through */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

/* QEMU refuses a plugin whose version is outside [QEMU_PLUGIN_MIN_VERSION, QEMU_PLUGIN_VERSION];
 * 7.2 has QEMU_PLUGIN_VERSION 1 (and accepts 0 and 1). */
int qemu_plugin_version = 1;
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv);
/* ---- end of the plugin API ---- */

static uint64_t insn_count;
static char out_path[4096];

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count,
                                             (uint64_t)qemu_plugin_tb_n_insns(tb));
}

static void write_count(qemu_plugin_id_t id, void *userdata)
{
    char line[64];
    FILE *f;
    (void)id;
    (void)userdata;
    snprintf(line, sizeof line, "%llu\n", (unsigned long long)insn_count);
    if (out_path[0] != '\0' && (f = fopen(out_path, "w")) != NULL) {
        fputs(line, f);
        fclose(f);
    }
    qemu_plugin_outs(line);
}

int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    int i;
    (void)info;
    for (i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) != 0 || strlen(argv[i] + 4) >= sizeof out_path) return -1;
        strcpy(out_path, argv[i] + 4);
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_count, NULL);
    return 0;
}
