# nibble - one non-recursive Makefile.  Build output goes under build/.
#
#   make                 build libnibble and the programs into build/bin/
#   make test            build everything and run every test (alias: check)
#   make test-aarch64    cross-build the kernel tests for aarch64 and run them
#                        under qemu (part of make test when installed)
#   make run             build, then open nib's chat on the default model
#   make soak            nibd under load: 16 clients, 2,000 mixed requests
#   make bench           print benchmark figures (asserts nothing)
#   make quality         print perplexity and KL divergence of every quantized
#                        type against F32 (asserts nothing)
#   make install         install into $(DESTDIR)$(PREFIX)
#
# The Lua module nibble.core is built once per Lua ABI: lua/nibble/core.so
# for LuaJIT (Neovim) and build/lua5.4/nibble/core.so for Lua 5.4, each
# skipped with a note when its headers are missing.
#
# Fuzzing and ThreadSanitizer (rules in tests/fuzz/fuzz.mk):
#   make fuzz            build the libFuzzer targets of tests/fuzz/ with clang,
#                        run each FUZZ_TIME seconds (default 60) and check the
#                        committed corpus's coverage (tests/fuzz/coverage.txt)
#   make test-tsan       the thread-pool and daemon tests under ThreadSanitizer
#
# Switches: V=1 (show commands), DEBUG=1 (-O0 -g), SANITIZE=address,undefined,
# NATIVE=1 (-march=native), WERROR=0 (do not turn warnings into errors).
# Debug and sanitizer builds live in their own directories under build/ so
# they never mix objects with the release build (SANITIZE=thread: build/tsan).

CC ?= cc
AR ?= ar
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
DESTDIR ?=
PKG_CONFIG ?= pkg-config

STD = -std=c11 -D_GNU_SOURCE
WARN = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter
ifneq ($(WERROR),0)
WARN += -Werror
endif
OPT = -O2 -g
BUILD = build
ifeq ($(DEBUG),1)
OPT = -O0 -g3
BUILD = build/debug
endif
ifneq ($(SANITIZE),)
OPT = -O1 -g -fno-omit-frame-pointer -fsanitize=$(SANITIZE) -fno-sanitize-recover=all
SANITIZE_LDFLAGS = -fsanitize=$(SANITIZE)
# ThreadSanitizer cannot be mixed with the others: its own objects
BUILD = $(if $(findstring thread,$(SANITIZE)),build/tsan,build/sanitize)
endif
ifeq ($(NATIVE),1)
OPT += -march=native
endif
# the runtimes an uninstrumented program (lua5.4, luajit) needs preloaded to
# load an instrumented module
LUA_PRELOAD = $(if $(SANITIZE),$(strip $(foreach s,$(if $(findstring address,$(SANITIZE)),asan) \
	$(if $(findstring undefined,$(SANITIZE)),ubsan),$(shell $(CC) -print-file-name=lib$(s).so))))

INCLUDES = -Icore/include -Icore/src -Icore/kernels
FINAL_CFLAGS = $(STD) $(WARN) $(OPT) $(INCLUDES) -fvisibility=hidden -fPIC -MMD -MP $(CFLAGS)
FINAL_LDFLAGS = $(SANITIZE_LDFLAGS) $(LDFLAGS)
LIBS = -lm -lpthread

JANSSON_CFLAGS := $(shell $(PKG_CONFIG) --cflags jansson 2>/dev/null)
JANSSON_LIBS := $(shell $(PKG_CONFIG) --libs jansson 2>/dev/null || echo -ljansson)
CMOCKA_LIBS := $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null || echo -lcmocka)
NIB_CFLAGS := $(shell $(PKG_CONFIG) --cflags libedit libcurl libcrypto 2>/dev/null)
# nib links libedit only; libcurl and libcrypto (headers from libcurl4-openssl-dev
# and libssl-dev) are opened at run time by `nib pull`, see shell/pull.c.
NIB_LIBS := $(shell $(PKG_CONFIG) --libs libedit 2>/dev/null || echo -ledit) -ldl

ifeq ($(V),1)
Q =
say =
else
Q = @
say = @printf '  %-8s %s\n' $(1) $(2);
endif

ARCH := $(shell $(CC) -dumpmachine 2>/dev/null)

# ------------------------------------------------------------------ sources
LIB_SRC := $(sort $(wildcard core/src/*.c) $(wildcard core/kernels/*_ref.c) core/kernels/dispatch.c core/kernels/quantize.c core/kernels/pack.c)
ifneq ($(filter x86_64%,$(ARCH)),)
LIB_SRC += $(sort $(wildcard core/kernels/*_avx2.c))
endif
ifneq ($(filter aarch64%,$(ARCH)),)
LIB_SRC += $(sort $(wildcard core/kernels/*_neon.c))
endif
TOOL_SRC := $(sort $(wildcard core/tools/*.c))
DAEMON_SRC := $(sort $(wildcard core/daemon/*.c))
NIB_SRC := $(sort $(wildcard shell/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TESTUTIL_SRC := tests/testutil.c tests/gguf_builder.c

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
TOOL_OBJ := $(TOOL_SRC:%.c=$(BUILD)/obj/%.o)
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(BUILD)/obj/%.o)
NIB_OBJ := $(NIB_SRC:%.c=$(BUILD)/obj/%.o)
TESTUTIL_OBJ := $(TESTUTIL_SRC:%.c=$(BUILD)/obj/%.o)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

LIBNIBBLE := $(BUILD)/lib/libnibble.a
NIBBLE := $(BUILD)/bin/nibble
NIBD := $(BUILD)/bin/nibd
NIB := $(BUILD)/bin/nib
PROGRAMS := $(NIBBLE) $(NIBD) $(NIB)

# The Lua module: lua/src/*.c compiled once per Lua ABI.  It never links
# liblua (the interpreter that loads it provides those symbols); libnibble
# goes in statically, its symbols kept local, and jansson and pthread
# dynamically.  The LuaJIT build lands in lua/nibble/ for Neovim; debug and
# sanitizer builds stay under their build directory.
LUA_SRC := $(sort $(wildcard lua/src/*.c))
ifeq ($(origin LUA54_CFLAGS),undefined)
LUA54_CFLAGS := $(shell $(PKG_CONFIG) --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
endif
ifeq ($(origin LUAJIT_CFLAGS),undefined)
LUAJIT_CFLAGS := $(shell $(PKG_CONFIG) --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)
endif
# the headers must be the right Lua's, not just some lua.h
have_lua = $(shell printf '$(2)' | $(CC) $(1) -E -x c - >/dev/null 2>&1 && echo yes)
# (\043 is '#', which make would take for a comment)
LUA54_OK := $(call have_lua,$(LUA54_CFLAGS),\043include <lua.h>\n\043if LUA_VERSION_NUM != 504\n\043error\n\043endif\n)
LUAJIT_OK := $(call have_lua,$(LUAJIT_CFLAGS),\043include <luajit.h>\n)
LUA54_OBJ := $(LUA_SRC:%.c=$(BUILD)/obj/lua5.4/%.o)
LUAJIT_OBJ := $(LUA_SRC:%.c=$(BUILD)/obj/luajit/%.o)
LUA54_MOD := $(BUILD)/lua5.4/nibble/core.so
ifeq ($(BUILD),build)
LUAJIT_MOD := lua/nibble/core.so
else
LUAJIT_MOD := $(BUILD)/luajit/nibble/core.so
endif
LUA_MODULES := $(if $(LUA54_OK),$(LUA54_MOD)) $(if $(LUAJIT_OK),$(LUAJIT_MOD))
LUA_MISSING := $(if $(LUA54_OK),,lua5.4) $(if $(LUAJIT_OK),,luajit)
LUA_CMODDIR ?= $(LIBDIR)/lua/5.4

.PHONY: all test check test-aarch64 kernel-tests bench quality run install uninstall clean lua-note lua-compat
.DEFAULT_GOAL := all

all: $(PROGRAMS) $(LUA_MODULES) $(if $(strip $(LUA_MISSING)),lua-note)

lua-note:
	@echo "skipped: the Lua module for $(strip $(LUA_MISSING)) (no headers: apt-get install liblua5.4-dev libluajit-5.1-dev)"

$(BUILD)/obj/%.o: %.c
	$(call say,CC,$<)
	@mkdir -p $(@D)
	$(Q)$(CC) $(FINAL_CFLAGS) -c $< -o $@

# SIMD variants are compiled for their instruction set and only called after
# the CPU has been checked at run time (core/kernels/dispatch.c).
$(BUILD)/obj/core/kernels/%_avx2.o: FINAL_CFLAGS += -mavx2 -mfma -mf16c
$(BUILD)/obj/core/kernels/%_dotprod_neon.o: FINAL_CFLAGS += -march=armv8.2-a+dotprod

$(BUILD)/obj/core/tools/%.o: FINAL_CFLAGS += $(JANSSON_CFLAGS)
$(BUILD)/obj/core/daemon/%.o: FINAL_CFLAGS += $(JANSSON_CFLAGS)
$(BUILD)/obj/shell/%.o: FINAL_CFLAGS += $(JANSSON_CFLAGS) $(NIB_CFLAGS)
$(BUILD)/obj/tests/%.o: FINAL_CFLAGS += $(JANSSON_CFLAGS) -Wno-missing-prototypes

$(LIBNIBBLE): $(LIB_OBJ)
	$(call say,AR,$@)
	@mkdir -p $(@D)
	$(Q)rm -f $@ && $(AR) rcs $@ $^

$(NIBBLE): $(TOOL_OBJ) $(LIBNIBBLE)
	$(call say,LINK,$@)
	@mkdir -p $(@D)
	$(Q)$(CC) $(FINAL_LDFLAGS) -o $@ $(TOOL_OBJ) $(LIBNIBBLE) $(JANSSON_LIBS) $(LIBS)

$(NIB): $(NIB_OBJ) $(LIBNIBBLE)
	$(call say,LINK,$@)
	@mkdir -p $(@D)
	$(Q)$(CC) $(FINAL_LDFLAGS) -o $@ $(NIB_OBJ) $(LIBNIBBLE) $(NIB_LIBS) $(JANSSON_LIBS) $(LIBS)

$(NIBD): $(DAEMON_OBJ) $(LIBNIBBLE)
	$(call say,LINK,$@)
	@mkdir -p $(@D)
	$(Q)$(CC) $(FINAL_LDFLAGS) -o $@ $(DAEMON_OBJ) $(LIBNIBBLE) $(JANSSON_LIBS) $(LIBS)

$(BUILD)/obj/lua5.4/%.o: %.c
	$(call say,CC,$@)
	@mkdir -p $(@D)
	$(Q)$(CC) $(FINAL_CFLAGS) $(JANSSON_CFLAGS) $(LUA54_CFLAGS) -c $< -o $@

$(BUILD)/obj/luajit/%.o: %.c
	$(call say,CC,$@)
	@mkdir -p $(@D)
	$(Q)$(CC) $(FINAL_CFLAGS) $(JANSSON_CFLAGS) $(LUAJIT_CFLAGS) -c $< -o $@

LUA_LINK = $(CC) -shared $(FINAL_LDFLAGS) -Wl,--exclude-libs,ALL -o $@

$(LUA54_MOD): $(LUA54_OBJ) $(LIBNIBBLE)
	$(call say,LINK,$@)
	@mkdir -p $(@D)
	$(Q)$(LUA_LINK) $(LUA54_OBJ) $(LIBNIBBLE) $(JANSSON_LIBS) $(LIBS)

$(LUAJIT_MOD): $(LUAJIT_OBJ) $(LIBNIBBLE)
	$(call say,LINK,$@)
	@mkdir -p $(@D)
	$(Q)$(LUA_LINK) $(LUAJIT_OBJ) $(LIBNIBBLE) $(JANSSON_LIBS) $(LIBS)

# ------------------------------------------------------------------ tests
$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(TESTUTIL_OBJ) $(LIBNIBBLE)
	$(call say,LINK,$@)
	@mkdir -p $(@D)
	$(Q)$(CC) $(FINAL_LDFLAGS) -o $@ $< $(TESTUTIL_OBJ) $(LIBNIBBLE) $(CMOCKA_LIBS) $(JANSSON_LIBS) $(LIBS) -lutil

# Fuzzing (make fuzz), the fuzz corpus test and ThreadSanitizer (make test-tsan).
include tests/fuzz/fuzz.mk

# Tests find the programs through NIBBLE_BIN and the shared reference data
# through NIBBLE_TEST_DATA (default ../shared beside the checkout).
# test_lua finds the Lua modules through NIBBLE_LUA54_MODULE and
# NIBBLE_LUAJIT_MODULE; under SANITIZE the interpreters, which are not
# instrumented, get the sanitizer runtimes through NIBBLE_LUA_PRELOAD.
test check: all $(TEST_BIN)
	@NIBBLE_BIN=$(abspath $(BUILD)/bin) NIBBLE_SRC=$(CURDIR) \
	NIBBLE_LUA54_MODULE=$(if $(LUA54_OK),$(abspath $(LUA54_MOD))) \
	NIBBLE_LUAJIT_MODULE=$(if $(LUAJIT_OK),$(abspath $(LUAJIT_MOD))) \
	NIBBLE_LUA_PRELOAD="$(LUA_PRELOAD)" ./tests/run-tests $(TEST_BIN)
ifeq ($(filter aarch64%,$(ARCH))$(SANITIZE),)
	@$(MAKE) --no-print-directory lua-compat
	@$(MAKE) --no-print-directory test-aarch64 AARCH64_OPTIONAL=1
endif

# nibd under load (tests/test_soak.c): 16 clients send 2,000 mixed requests,
# cancelling and hanging up on some, with malformed and oversized lines; it
# prints requests/s and latency percentiles.  make test runs the same
# program with 300 requests.  NIBBLE_SOAK_REQUESTS, NIBBLE_SOAK_CLIENTS and
# NIBBLE_SOAK_SEED override the size and the seed.
.PHONY: soak
soak: all $(BUILD)/tests/test_soak
	@NIBBLE_BIN=$(abspath $(BUILD)/bin) NIBBLE_SRC=$(CURDIR) \
	NIBBLE_SOAK_REQUESTS=$${NIBBLE_SOAK_REQUESTS:-2000} $(BUILD)/tests/test_soak

# nibble.core is written to Lua 5.4's C API and, through lua/src/compat.h,
# to 5.1 (LuaJIT), 5.2 and 5.3: make test compiles it against each of those
# header sets that is installed (Debian: liblua5.1-0-dev, liblua5.2-dev,
# liblua5.3-dev); 5.4 and LuaJIT are built and run by test_lua.
LUA_COMPAT_VERSIONS = 5.1 5.2 5.3
lua-compat:
	@for v in $(LUA_COMPAT_VERSIONS); do \
		if [ -f /usr/include/lua$$v/lua.h ]; then \
			for f in $(LUA_SRC); do \
				$(CC) $(filter-out -MMD -MP,$(FINAL_CFLAGS)) $(JANSSON_CFLAGS) -I/usr/include/lua$$v \
					-fsyntax-only $$f || exit 1; \
			done; \
			echo "nibble.core compiles against Lua $$v's headers"; \
		else \
			echo "skipped: no Lua $$v headers (liblua$$v-dev) to compile nibble.core against"; \
		fi; \
	done

# The NEON kernels, tested on any machine: the library, nibble and the
# kernel tests cross-compiled into build/aarch64/ and run under qemu-user.
# Needs Debian's gcc-aarch64-linux-gnu and qemu-user, and cmocka and
# jansson for arm64 (multiarch: libcmocka-dev:arm64 libjansson-dev:arm64,
# see .ci/run).  qemu's "max" CPU has the dot-product extension, and
# test_simd runs itself again with NIBBLE_KERNELS=neon, so both NEON
# variants are checked.  No -L: the arm64 libraries and their loader are
# installed under / by multiarch, and pairing them with the cross
# toolchain's loader in /usr/aarch64-linux-gnu hangs threaded programs.
# NIBBLE_TEST_RUNNER makes run-tests and the tests' own child processes
# go through qemu too.
AARCH64_CC = aarch64-linux-gnu-gcc
AARCH64_AR = aarch64-linux-gnu-ar
QEMU_AARCH64 = qemu-aarch64 -cpu max
AARCH64_BUILD = build/aarch64
KERNEL_TESTS := $(wildcard tests/test_kernels.c tests/test_simd.c tests/test_kquant_simd.c \
	tests/test_threads.c)

# nibble and the kernel-level tests only (what the cross build makes).
kernel-tests: $(NIBBLE) $(KERNEL_TESTS:tests/%.c=$(BUILD)/tests/%)
	@:

test-aarch64:
	@if ! command -v $(AARCH64_CC) >/dev/null || ! command -v $(firstword $(QEMU_AARCH64)) >/dev/null || \
	    [ "$$($(AARCH64_CC) -print-file-name=libcmocka.so)" = libcmocka.so ] || \
	    [ "$$($(AARCH64_CC) -print-file-name=libjansson.so)" = libjansson.so ]; then \
		echo "skipped: no aarch64 cross toolchain ($(AARCH64_CC), $(firstword $(QEMU_AARCH64)), libcmocka-dev:arm64, libjansson-dev:arm64)"; \
		exit $(if $(AARCH64_OPTIONAL),0,1); \
	fi; \
	$(MAKE) --no-print-directory BUILD=$(AARCH64_BUILD) CC=$(AARCH64_CC) AR=$(AARCH64_AR) \
		PKG_CONFIG=false NATIVE=0 DEBUG=0 SANITIZE= kernel-tests && \
	echo "aarch64 (under $(QEMU_AARCH64)):" && \
	NIBBLE_TEST_RUNNER="$(QEMU_AARCH64)" NIBBLE_BIN=$(abspath $(AARCH64_BUILD)/bin) NIBBLE_SRC=$(CURDIR) \
		./tests/run-tests $(KERNEL_TESTS:tests/%.c=$(AARCH64_BUILD)/tests/%)

# Figures only; nothing here asserts a time.  The models are generated
# here (a random-weight TinyLlama-1.1B shape, quantized) and kept in
# build/bench/ for the next run.  BENCH_ARGS passes options to nibble bench.
BENCH_DIR = build/bench
BENCH_VOCAB = $(wildcard ../shared/vocab/ggml-vocab-llama-spm.gguf)
BENCH_TYPES = q4_0 q4_k_m q8_0
BENCH_MODELS = $(BENCH_TYPES:%=$(BENCH_DIR)/tinyllama-1.1b-%.gguf)

$(BENCH_DIR)/tinyllama-1.1b-f16.gguf: | $(NIBBLE)
	@mkdir -p $(@D)
	$(NIBBLE) synth -p tinyllama-1.1b $(if $(BENCH_VOCAB),--vocab $(BENCH_VOCAB)) -o $@

$(BENCH_DIR)/tinyllama-1.1b-%.gguf: $(BENCH_DIR)/tinyllama-1.1b-f16.gguf | $(NIBBLE)
	$(NIBBLE) quantize $< $@ $(shell echo $* | tr a-z A-Z)

$(BENCH_DIR)/tinyllama-1.1b-lora16.gguf: | $(NIBBLE)
	@mkdir -p $(@D)
	$(NIBBLE) synth -p tinyllama-1.1b --lora-rank 16 -o $@

bench: all $(BENCH_MODELS) $(BENCH_DIR)/tinyllama-1.1b-lora16.gguf
	@for m in $(BENCH_MODELS); do $(NIBBLE) bench -m $$m $(BENCH_ARGS) || exit 1; echo; done
	@echo "nibd on $(BENCH_DIR)/tinyllama-1.1b-q4_0.gguf:"
	@$(NIBBLE) bench --daemon --nib $(NIB) -m $(BENCH_DIR)/tinyllama-1.1b-q4_0.gguf $(BENCH_ARGS)
	@echo
	@echo "with a rank-16 LoRA adapter on every matrix (nibble synth --lora-rank 16):"
	@$(NIBBLE) bench -m $(BENCH_DIR)/tinyllama-1.1b-q4_0.gguf --lora $(BENCH_DIR)/tinyllama-1.1b-lora16.gguf $(BENCH_ARGS)
	@echo
	@echo "scalar reference kernels, for scale (64-token prompt, 16 generated):"
	@NIBBLE_KERNELS=ref $(NIBBLE) bench -m $(BENCH_DIR)/tinyllama-1.1b-q4_0.gguf -p 64 -n 16
	@echo
	@NIBBLE_BIN=$(abspath $(BUILD)/bin) ./tests/nvim/bench.sh $(BENCH_DIR)/tinyllama-1.1b-q4_0.gguf

# Figures only, like bench: stories260K-wide-f32.gguf quantized to every
# type nibble quantize writes (kept in build/quality/), each scored with
# nibble perplexity --kl-base against the F32 model: size, bits per weight,
# perplexity, KL divergence and top-1 agreement.  The held-out text,
# tests/data/stories.txt, is simple stories in the TinyStories manner written
# by hand for this (not generated by the model, not taken from TinyStories),
# so the perplexity is that of text the model has never seen.
# QUALITY_TYPES and QUALITY_ARGS (default -c 128) override the types and the
# perplexity options.
QUALITY_MODEL = $(or $(NIBBLE_TEST_DATA),../shared)/models/stories260K-wide-f32.gguf
quality: $(NIBBLE)
	@./tests/quality.sh $(NIBBLE) $(QUALITY_MODEL) tests/data/stories.txt $(BUILD)/quality

# The default model: $NIBBLE_MODEL, else the shared test model beside the
# checkout.  (nib, with its download on first use, replaces this.)
# make run: nib's chat on the default model.  The first time, that model is
# pulled (with a progress bar); without a network it falls back to the
# shared test model beside the checkout, or says what to do.  NIBBLE_MODEL
# (or -m in NIB_ARGS) picks another.
SHARED_MODEL = ../shared/models/stories260K.gguf
run: all
	@if ! $(NIB) models --path >/dev/null 2>&1; then \
		echo "make run: no model yet; fetching the default one (nib pull tinyllama)"; \
		if ! $(NIB) pull tinyllama; then \
			if [ -f $(SHARED_MODEL) ]; then \
				echo "make run: no download; using $(SHARED_MODEL) (a tiny story model, no chat template)"; \
				NIBBLE_MODEL=$$(realpath $(SHARED_MODEL)); export NIBBLE_MODEL; \
			else \
				echo "make run: no model. When online, run '$(NIB) pull tinyllama' (or any"; \
				echo "'nib pull URL' of a GGUF file); or point NIBBLE_MODEL at a GGUF file you"; \
				echo "have: NIBBLE_MODEL=/path/to/model.gguf make run"; \
				exit 1; \
			fi; \
		fi; \
	fi; \
	exec $(NIB) $(NIB_ARGS)

# ------------------------------------------------------------------ install
install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(INCDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8
	install -m 755 $(PROGRAMS) $(DESTDIR)$(BINDIR)/
	install -m 644 $(LIBNIBBLE) $(DESTDIR)$(LIBDIR)/
	@printf 'prefix=%s\nlibdir=%s\nincludedir=%s\n\nName: nibble\nDescription: local LLaMA-family inference\nVersion: %s\nLibs: -L$${libdir} -lnibble -lm -lpthread\nCflags: -I$${includedir}\n' \
		'$(PREFIX)' '$(LIBDIR)' '$(INCDIR)' \
		"$$(sed -n 's/^#define NB_VERSION "\(.*\)"/\1/p' core/include/nibble.h)" > $(DESTDIR)$(LIBDIR)/pkgconfig/nibble.pc
	install -m 644 core/include/nibble.h $(DESTDIR)$(INCDIR)/
	install -m 644 doc/nibble.1 doc/nib.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 644 doc/nibd.8 $(DESTDIR)$(MANDIR)/man8/
ifneq ($(LUA54_OK),)
	install -d $(DESTDIR)$(LUA_CMODDIR)/nibble
	install -m 755 $(LUA54_MOD) $(DESTDIR)$(LUA_CMODDIR)/nibble/core.so
endif

uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(notdir $(PROGRAMS)))
	rm -f $(DESTDIR)$(LIBDIR)/libnibble.a $(DESTDIR)$(LIBDIR)/pkgconfig/nibble.pc
	rm -f $(DESTDIR)$(INCDIR)/nibble.h $(DESTDIR)$(MANDIR)/man1/nibble.1 $(DESTDIR)$(MANDIR)/man1/nib.1 $(DESTDIR)$(MANDIR)/man8/nibd.8
	rm -f $(DESTDIR)$(LUA_CMODDIR)/nibble/core.so
	rmdir $(DESTDIR)$(LUA_CMODDIR)/nibble 2>/dev/null || true

clean:
	rm -rf build lua/nibble/core.so

-include $(LIB_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) $(DAEMON_OBJ:.o=.d) $(NIB_OBJ:.o=.d) $(TESTUTIL_OBJ:.o=.d) $(TEST_SRC:tests/%.c=$(BUILD)/obj/tests/%.d)
-include $(LUA54_OBJ:.o=.d) $(LUAJIT_OBJ:.o=.d)

# Keep test objects: they are intermediates of the test binaries.
.SECONDARY: $(TEST_SRC:tests/%.c=$(BUILD)/obj/tests/%.o) $(TESTUTIL_OBJ)
