/*
 * test_nvim.c - the Neovim plugin in a real, headless Neovim.
 *
 * One Neovim (the editor) loads the plugin from this checkout and listens
 * on an RPC socket; a second one runs tests/nvim/driver.lua, which types
 * into the editor through nvim_input, as a user would, and checks what the
 * plugin shows and does.  The daemon is a private nibd on stories260K.gguf;
 * the suggestion the driver must see is computed here with nibble eval,
 * not taken from the plugin.  A second daemon on a larger random model
 * (slow enough to interrupt) shows that typing during a request cancels
 * it at the daemon.
 */
#include "testutil.h"

#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *src_dir(void)
{
    static char buf[4096];
    const char *s = getenv("NIBBLE_SRC");
    if (s && *s)
        return s;
    return getcwd(buf, sizeof buf) ? buf : ".";
}

static pid_t editor = -1;
static nbt_daemon fast = {0}, slow = {0}, fimd = {0}, lorad = {0};
static char dir[64];

static int teardown(void **state)
{
    (void)state;
    if (editor > 0) {
        kill(editor, SIGKILL);
        waitpid(editor, NULL, 0);
        editor = -1;
    }
    if (fast.pid > 0)
        nbt_daemon_stop(&fast);
    if (slow.pid > 0)
        nbt_daemon_stop(&slow);
    if (fimd.pid > 0)
        nbt_daemon_stop(&fimd);
    if (lorad.pid > 0)
        nbt_daemon_stop(&lorad);
    if (dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", dir);
        dir[0] = 0;
    }
    return 0;
}

static void test_plugin(void **state)
{
    (void)state;
    NBT_REQUIRE_DATA();
    char nvim[4096];
    if (!nbt_find_program("nvim", nvim, sizeof nvim)) {
        printf("    skipped: nvim is not installed (Debian: apt-get install neovim)\n");
        return;
    }
    char so[4200];
    snprintf(so, sizeof so, "%s/lua/nibble/core.so", src_dir());
    if (access(so, R_OK) != 0)
        fail_msg("%s is not built (make builds it for Neovim's LuaJIT)", so);

    snprintf(dir, sizeof dir, "/tmp/nibble-nvim-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char *m = nbt_data_path("models/stories260K.gguf");
    nbt_daemon_start(&fast, m, NULL);
    const int n_predict = 16;
    char *expect = nbt_eval_text(m, "Once upon a time", n_predict);

    /* a random model slow enough to interrupt (tens of ms per token) */
    char slow_model[128], *out, *err;
    snprintf(slow_model, sizeof slow_model, "%s/slow.gguf", dir);
    char bin[4096];
    snprintf(bin, sizeof bin, "%s", nbt_bin("nibble"));
    char *synth[] = {bin, "synth", "-o", slow_model, "--embd", "1024", "--layers", "8", "--heads", "16",
                     "--kv-heads", "4", "--ff", "2816", "--ctx", "1024", NULL};
    assert_int_equal(nbt_run(synth, &out, &err, 120), 0);
    free(out), free(err);
    nbt_daemon_start(&slow, slow_model, NULL);
    /* a model with fill-in-the-middle tokens (DeepSeek-Coder's vocabulary) */
    char *fm = nbt_data_path("models/llama-bpe-random-f16.gguf");
    nbt_daemon_start(&fimd, fm, NULL);
    free(fm);
    /* the wide story model with a LoRA adapter the plugin's lora option names */
    char *wm = nbt_data_path("models/stories260K-wide-f32.gguf");
    char *la = nbt_data_path("models/lora-stories260K-wide-r8.gguf");
    char lora_arg[4200];
    snprintf(lora_arg, sizeof lora_arg, "story=%s", la);
    const char *lora_extra[] = {"--lora", lora_arg, NULL};
    nbt_daemon_start(&lorad, wm, lora_extra);
    free(wm);
    free(la);

    char addr[128], result[128], nps[16];
    snprintf(addr, sizeof addr, "%s/editor.sock", dir);
    snprintf(result, sizeof result, "%s/result.txt", dir);
    snprintf(nps, sizeof nps, "%d", n_predict);
    setenv("NIBBLE_SOCK", fast.sock, 1);
    setenv("NIBBLE_SLOW_SOCK", slow.sock, 1);
    setenv("NIBBLE_FIM_SOCK", fimd.sock, 1);
    setenv("NIBBLE_LORA_SOCK", lorad.sock, 1);
    setenv("NIBBLE_EXPECT", expect, 1);
    setenv("NIBBLE_N_PREDICT", nps, 1);
    setenv("NIBBLE_ADDR", addr, 1);
    setenv("NIBBLE_RESULT", result, 1);
    /* the daemon must not be started by the plugin with a user's model */
    unsetenv("NIBBLE_MODEL");

    char rtp[4200], ed[4200], drv[4200];
    snprintf(rtp, sizeof rtp, "set rtp^=%s", src_dir());
    snprintf(ed, sizeof ed, "luafile %s/tests/nvim/editor.lua", src_dir());
    snprintf(drv, sizeof drv, "luafile %s/tests/nvim/driver.lua", src_dir());
    editor = fork();
    if (editor == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        if (!getenv("NIBBLE_TEST_VERBOSE")) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execlp("nvim", "nvim", "--headless", "-u", "NONE", "-i", "NONE", "-n", "--listen", addr, "--cmd",
               rtp, "-c", ed, (char *)NULL);
        _exit(127);
    }
    struct stat st;
    for (int i = 0; i < 1000 && stat(addr, &st) != 0; i++)
        usleep(10000);
    assert_int_equal(stat(addr, &st), 0);

    char *argv[] = {nvim, "--headless", "-u", "NONE", "-i", "NONE", "-n", "--cmd", rtp, "-c", drv, NULL};
    int rc = nbt_run(argv, &out, &err, 120);
    char *res = nbt_read_file(result, NULL);
    printf("%s", res ? res : "    (no results)\n");
    if (rc != 0)
        printf("    driver exit %d; stderr: %s\n", rc, err ? err : "");
    assert_non_null(res);
    const char *must[] = {"ok suggestion appears after typing\n",
                          "ok typing the suggestion's next characters asks nothing\n",
                          "ok Tab inserts it\n",
                          "ok Tab without a suggestion does what it did before\n",
                          "ok accept a word, then cycle to an alternative and back\n",
                          "ok a disabled filetype sends nothing\n",
                          "ok checkhealth nibble passes\n",
                          "ok NibRewrite replaces the selection and undoes in one step\n",
                          "ok a model with FIM tokens gets the text after the cursor too\n",
                          "ok the lora option applies the daemon's adapter to suggestions\n",
                          "ok a keystroke during a request cancels it\n"};
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++)
        if (!strstr(res, must[i]))
            fail_msg("missing: %s", must[i]);
    assert_null(strstr(res, "not ok"));
    assert_int_equal(rc, 0);
    free(res), free(out), free(err), free(expect), free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_plugin, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
