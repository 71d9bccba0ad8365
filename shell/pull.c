/*
 * pull.c - `nib pull NAME|URL` and `nib models`: getting GGUF files into
 * $XDG_DATA_HOME/nibble/models/.
 *
 * The download goes to FILE.part, resumes from there after an interruption
 * (HTTP Range), and is renamed to its final name only after its sha256 has
 * been checked against the checksum the server publishes (Hugging Face
 * sends it for LFS files as the X-Linked-Etag header of its redirect) and
 * against one pinned with --sha256.  A mismatch deletes the download: no
 * file is ever left under the final name unverified against a published
 * or pinned checksum.  The short names of the catalogue resolve to
 * Hugging Face repositories; NIBBLE_HF_ENDPOINT replaces
 * https://huggingface.co (mirrors, tests).
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* libcurl and libcrypto are opened when a download starts, not linked:
 * together they pull in some forty libraries whose loading would cost
 * every nib command ten milliseconds of start-up.  Their headers give the
 * types and constants; net_open() finds the functions. */
#define CURL_DISABLE_TYPECHECK
#include <curl/curl.h>
#include <dlfcn.h>
#include <openssl/evp.h>

#include "nib.h"

static struct {
    void *curl, *crypto;
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_perform)(CURL *);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    void (*easy_cleanup)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    EVP_MD_CTX *(*md_ctx_new)(void);
    void (*md_ctx_free)(EVP_MD_CTX *);
    const EVP_MD *(*sha256)(void);
    int (*digest_init)(EVP_MD_CTX *, const EVP_MD *, ENGINE *);
    int (*digest_update)(EVP_MD_CTX *, const void *, size_t);
    int (*digest_final)(EVP_MD_CTX *, unsigned char *, unsigned int *);
} net;

static void *open_first(const char *const names[])
{
    void *h = NULL;
    for (int i = 0; names[i] && !h; i++)
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    return h;
}

/* 0, or -1 with the error said. */
static int net_open(void)
{
    static const char *const curl_names[] = {"libcurl.so.4", "libcurl.so", NULL};
    static const char *const crypto_names[] = {"libcrypto.so.3", "libcrypto.so", NULL};
    if (net.curl && net.crypto)
        return 0;
    if (!(net.curl = open_first(curl_names))) {
        nib_error("downloads need libcurl (Debian: apt-get install libcurl4): %s", dlerror());
        return -1;
    }
    if (!(net.crypto = open_first(crypto_names))) {
        nib_error("checksums need OpenSSL's libcrypto (Debian: apt-get install libssl3): %s",
                  dlerror());
        return -1;
    }
    struct {
        void *lib;
        const char *name;
        void **fn;
    } syms[] = {
        {net.curl, "curl_global_init", (void **)&net.global_init},
        {net.curl, "curl_easy_init", (void **)&net.easy_init},
        {net.curl, "curl_easy_setopt", (void **)&net.easy_setopt},
        {net.curl, "curl_easy_perform", (void **)&net.easy_perform},
        {net.curl, "curl_easy_getinfo", (void **)&net.easy_getinfo},
        {net.curl, "curl_easy_cleanup", (void **)&net.easy_cleanup},
        {net.curl, "curl_easy_strerror", (void **)&net.easy_strerror},
        {net.crypto, "EVP_MD_CTX_new", (void **)&net.md_ctx_new},
        {net.crypto, "EVP_MD_CTX_free", (void **)&net.md_ctx_free},
        {net.crypto, "EVP_sha256", (void **)&net.sha256},
        {net.crypto, "EVP_DigestInit_ex", (void **)&net.digest_init},
        {net.crypto, "EVP_DigestUpdate", (void **)&net.digest_update},
        {net.crypto, "EVP_DigestFinal_ex", (void **)&net.digest_final},
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++)
        if (!(*syms[i].fn = dlsym(syms[i].lib, syms[i].name))) {
            nib_error("the installed libcurl or libcrypto lacks %s", syms[i].name);
            return -1;
        }
    return 0;
}

#define curl_global_init net.global_init
#define curl_easy_init net.easy_init
#undef curl_easy_setopt
#undef curl_easy_getinfo
#define curl_easy_setopt net.easy_setopt
#define curl_easy_perform net.easy_perform
#define curl_easy_getinfo net.easy_getinfo
#define curl_easy_cleanup net.easy_cleanup
#define curl_easy_strerror net.easy_strerror
#define EVP_MD_CTX_new net.md_ctx_new
#define EVP_MD_CTX_free net.md_ctx_free
#define EVP_sha256 net.sha256
#define EVP_DigestInit_ex net.digest_init
#define EVP_DigestUpdate net.digest_update
#define EVP_DigestFinal_ex net.digest_final


typedef struct entry {
    const char *name, *repo, *file, *what;
} entry;

/* Checksums are not pinned here: they come from the server at download
 * time, and nobody here has verified them independently. */
static const entry catalogue[] = {
    {"tinyllama", "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF", "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
     "TinyLlama 1.1B chat (Zephyr format), 0.7 GB"},
    {"qwen2.5-coder", "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
     "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "Qwen2.5-Coder 1.5B, for completion, 1.1 GB"},
    {"llama3.2", "bartowski/Llama-3.2-1B-Instruct-GGUF", "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
     "Llama 3.2 1B instruct, 0.8 GB"},
};

typedef struct dl {
    CURL *h;
    int started;
    FILE *f;
    char sha_published[65];
    long status;
    int is_tty, quiet;
    curl_off_t resumed;
    double t0, last;
    int write_errno;     /* why writing the download failed (a full disk) */
} dl;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    dl *d = ud;
    size_t len = size * n;
    static const char key[] = "x-linked-etag:";
    if (len > sizeof key && !strncasecmp(buf, key, sizeof key - 1) && !d->sha_published[0]) {
        const char *v = buf + sizeof key - 1;
        size_t k = 0;
        for (; v < buf + len && k < 64; v++)
            if (isxdigit((unsigned char)*v))
                d->sha_published[k++] = (char)tolower((unsigned char)*v);
            else if (k)
                break;
        d->sha_published[k == 64 ? 64 : 0] = 0;
    }
    return len;
}

static size_t on_data(char *buf, size_t size, size_t n, void *ud)
{
    dl *d = ud;
    if (!d->started) {
        d->started = 1;
        long code = 0;
        curl_easy_getinfo(d->h, CURLINFO_RESPONSE_CODE, &code);
        if (d->resumed && code == 200) {
            /* the server sends the whole file, not the rest: start over */
            if (ftruncate(fileno(d->f), 0) != 0 || fseek(d->f, 0, SEEK_SET) != 0) {
                d->write_errno = errno ? errno : EIO;
                return 0;
            }
            d->resumed = 0;
        }
    }
    if (fwrite(buf, size, n, d->f) != n) {
        d->write_errno = errno ? errno : EIO;
        return 0;
    }
    return size * n;
}

/* One progress line, redrawn in place at most five times a second. */
static void draw_progress(dl *d, curl_off_t total, curl_off_t now, int force)
{
    if (!d->is_tty || d->quiet || (!force && now_s() - d->last < 0.2) || (!now && !total))
        return; /* nothing to show before the first byte */
    d->last = now_s();
    double have = (double)(now + d->resumed), all = (double)(total + d->resumed);
    double rate = (double)now / (now_s() - d->t0 + 1e-9) / 1e6;
    if (total > 0) {
        int pct = (int)(100 * have / all), bars = pct * 30 / 100;
        fprintf(stderr, "\r[%.*s%.*s] %3d%% %7.1f / %.1f MB %6.1f MB/s", bars,
                "##############################", 30 - bars, "..............................",
                pct, have / 1e6, all / 1e6, rate);
    } else {
        fprintf(stderr, "\r%7.1f MB %6.1f MB/s", have / 1e6, rate);
    }
    fflush(stderr);
}

static int on_progress(void *ud, curl_off_t total, curl_off_t now, curl_off_t ut, curl_off_t un)
{
    (void)ut, (void)un;
    if (nib_interrupted)
        return 1;
    draw_progress(ud, total, now, 0);
    return 0;
}

static int sha256_file(const char *path, char out[65])
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    unsigned char buf[1 << 16];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0)
        ok = EVP_DigestUpdate(ctx, buf, n);
    unsigned char md[32];
    unsigned int mdlen = 0;
    ok = ok && !ferror(f) && EVP_DigestFinal_ex(ctx, md, &mdlen) && mdlen == 32;
    EVP_MD_CTX_free(ctx);
    fclose(f);
    if (!ok)
        return -1;
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

static int is_sha256(const char *s)
{
    if (strlen(s) != 64)
        return 0;
    for (; *s; s++)
        if (!isxdigit((unsigned char)*s))
            return 0;
    return 1;
}

int nib_models(void)
{
    char dir[4096];
    if (nib_data_dir(dir, sizeof dir, "models")) {
        nib_error("cannot find the data directory (is HOME set?)");
        return NIB_ERR;
    }
    DIR *d = opendir(dir);
    char def[4200], target[4096] = "";
    snprintf(def, sizeof def, "%s/default.gguf", dir);
    ssize_t tl = readlink(def, target, sizeof target - 1);
    target[tl > 0 ? tl : 0] = 0;
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".gguf") || !strcmp(e->d_name, "default.gguf"))
            continue;
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st))
            continue;
        const char *base = strrchr(target, '/');
        int is_def = !strcmp(base ? base + 1 : target, e->d_name);
        printf("%s %8.1f MB  %s\n", is_def ? "*" : " ", (double)st.st_size / 1e6, path);
        n++;
    }
    if (d)
        closedir(d);
    if (!n)
        fprintf(stderr, "no models in %s yet: try 'nib pull tinyllama'\n", dir);
    return NIB_OK;
}

int nib_pull(int argc, char **argv, const nib_opts *o)
{
    static const struct option opts[] = {{"sha256", required_argument, 0, 'S'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *pinned = NULL;
    int quiet = o->quiet, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        switch (c) {
        case 'S':
            if (!is_sha256(optarg)) {
                nib_error("--sha256 wants 64 hexadecimal digits");
                return NIB_USAGE;
            }
            pinned = optarg;
            break;
        case 'q': quiet = 1; break;
        case 'h':
            printf("usage: nib pull [--sha256 HEX] NAME|URL\n\nNames:\n");
            for (size_t i = 0; i < sizeof catalogue / sizeof catalogue[0]; i++)
                printf("  %-14s %s\n", catalogue[i].name, catalogue[i].what);
            return NIB_OK;
        default: return NIB_USAGE;
        }
    }
    if (argc - optind != 1) {
        nib_error("give one name or URL (nib pull --help lists the names)");
        return NIB_USAGE;
    }
    const char *what = argv[optind];
    char url[4096];
    const char *file;
    const char *ep = getenv("NIBBLE_HF_ENDPOINT");
    if (!ep || !*ep)
        ep = "https://huggingface.co";
    if (strstr(what, "://")) {
        snprintf(url, sizeof url, "%s", what);
        file = strrchr(url, '/') + 1;
    } else {
        size_t i;
        for (i = 0; i < sizeof catalogue / sizeof catalogue[0]; i++)
            if (!strcmp(catalogue[i].name, what))
                break;
        if (i == sizeof catalogue / sizeof catalogue[0]) {
            nib_error("unknown model name '%s' (nib pull --help lists them; or give a URL)", what);
            return NIB_USAGE;
        }
        snprintf(url, sizeof url, "%s/%s/resolve/main/%s", ep, catalogue[i].repo,
                 catalogue[i].file);
        file = catalogue[i].file;
    }
    char fname[256];
    snprintf(fname, sizeof fname, "%.*s", (int)strcspn(file, "?#"), file);
    if (!*fname || strchr(fname, '/') || fname[0] == '.') {
        nib_error("cannot tell a file name from %s", url);
        return NIB_USAGE;
    }
    char dir[4096], final[4400], part[4500];
    if (nib_data_dir(dir, sizeof dir, "models") || nb_mkdirs(dir)) {
        nib_error("cannot create the models directory");
        return NIB_ERR;
    }
    snprintf(final, sizeof final, "%s/%s", dir, fname);
    snprintf(part, sizeof part, "%s.part", final);
    if (access(final, F_OK) == 0) {
        fprintf(stderr, "nib: %s is already installed\n", final);
        puts(final);
        return NIB_OK;
    }

    if (net_open())
        return NIB_ERR;
    dl d = {0};
    d.is_tty = isatty(2);
    d.quiet = quiet;
    struct stat st;
    if (stat(part, &st) == 0 && st.st_size > 0)
        d.resumed = (curl_off_t)st.st_size;
    d.f = fopen(part, d.resumed ? "ab" : "wb");
    if (!d.f) {
        nib_error("cannot write %s: %s", part, strerror(errno));
        return NIB_ERR;
    }
    if (d.resumed && !quiet)
        fprintf(stderr, "nib: resuming %s from %.1f MB\n", fname, (double)d.resumed / 1e6);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *h = curl_easy_init();
    d.h = h;
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &d);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &d);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &d);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "nibble/" NB_VERSION);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 20L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);   /* stalled for a minute: give up */
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
    if (d.resumed)
        curl_easy_setopt(h, CURLOPT_RESUME_FROM_LARGE, d.resumed);
    d.t0 = now_s();
    CURLcode rc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &d.status);
    if (d.resumed && d.status == 416) /* nothing left to fetch: check what we have */
        rc = CURLE_OK;
    else if (rc == CURLE_OK) { /* the last word: the bar at its end, however fast it got there */
        curl_off_t got = 0, want = 0;
        curl_easy_getinfo(h, CURLINFO_SIZE_DOWNLOAD_T, &got);
        curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &want);
        draw_progress(&d, want > 0 ? want : got, got, 1);
    }
    curl_easy_cleanup(h);
    int close_bad = fclose(d.f) != 0;
    if (d.is_tty && !quiet)
        fputc('\n', stderr);
    if (rc != CURLE_OK) {
        if (nib_interrupted || rc == CURLE_ABORTED_BY_CALLBACK) {
            nib_error("interrupted; run the same command again to resume");
            return NIB_CANCELLED;
        }
        if (rc == CURLE_WRITE_ERROR && d.write_errno) {
            /* a full disk: what came so far stays in FILE.part, never
             * under the model's name */
            nib_error("cannot write %s: %s; make room, then run the same command again to "
                      "resume", part, strerror(d.write_errno));
            return NIB_ERR;
        }
        struct stat pst;
        int kept = stat(part, &pst) == 0 && pst.st_size > 0;
        if (!kept)
            unlink(part); /* nothing to resume from */
        nib_error("download failed: %s (%s)%s", cerr[0] ? cerr : curl_easy_strerror(rc), url,
                  kept ? "; run the same command again to resume" : "");
        return NIB_ERR;
    }
    if (close_bad) {
        nib_error("cannot write %s: %s; make room, then run the same command again to resume",
                  part, strerror(errno));
        return NIB_ERR;
    }
    char got[65];
    if (sha256_file(part, got)) {
        nib_error("cannot read back %s", part);
        return NIB_ERR;
    }
    const char *mismatch = pinned && strcasecmp(pinned, got) ? pinned
                           : d.sha_published[0] && strcmp(d.sha_published, got) ? d.sha_published
                                                                              : NULL;
    if (mismatch) {
        unlink(part);
        nib_error("checksum mismatch for %s: expected %s, got %s; the download was deleted",
                  fname, mismatch, got);
        return NIB_ERR;
    }
    if (!pinned && !d.sha_published[0] && !quiet)
        nib_warn("the server published no checksum for %s: it was not verified (sha256 %s)",
                 fname, got);
    FILE *f = fopen(part, "rb");
    char magic[4] = "";
    size_t mg = f ? fread(magic, 1, 4, f) : 0;
    if (f)
        fclose(f);
    if (mg != 4 || memcmp(magic, "GGUF", 4)) {
        unlink(part);
        nib_error("%s is not a GGUF file; the download was deleted", url);
        return NIB_ERR;
    }
    if (rename(part, final)) {
        nib_error("cannot move the download into place: %s", strerror(errno));
        return NIB_ERR;
    }
    char def[4200];
    snprintf(def, sizeof def, "%s/default.gguf", dir);
    if (access(def, F_OK) != 0 && symlink(fname, def) == 0 && !quiet)
        fprintf(stderr, "nib: %s is now the default model\n", fname);
    if (!quiet)
        fprintf(stderr, "nib: installed %s (sha256 %s%s)\n", final, got,
                pinned || d.sha_published[0] ? ", verified" : "");
    puts(final);
    return NIB_OK;
}
