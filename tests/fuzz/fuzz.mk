# tests/fuzz/fuzz.mk - fuzzing, the fuzz corpus regression test and the
# ThreadSanitizer run; included by the Makefile.
#
#   make fuzz        build each libFuzzer target in tests/fuzz/ with clang
#                    (-fsanitize=fuzzer,address,undefined) into build/fuzz/,
#                    run it FUZZ_TIME seconds (default 60) on a copy of its
#                    committed corpus, then check the coverage the committed
#                    corpus alone reaches against tests/fuzz/coverage.txt.
#                    FUZZ_TARGETS=... picks targets, FUZZ_CC the compiler.
#   make fuzz-build  only build them.
#   make test-tsan   the thread-pool and daemon tests under ThreadSanitizer
#                    (build/tsan; SANITIZE=thread).
#
# The normal build links every target's entry into tests/test_fuzz_corpus,
# which runs the committed corpus and crash inputs as part of make test.

NBF_ALL := $(patsubst tests/fuzz/fuzz_%.c,%,$(sort $(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_TARGETS ?= $(NBF_ALL)
FUZZ_TIME ?= 60
FUZZ_CC ?= $(firstword $(shell command -v clang-14 clang 2>/dev/null) clang)
FUZZ_BUILD = build/fuzz
# what every target links besides its own file and libnibble
NBF_OBJ := $(addprefix $(BUILD)/obj/,tests/fuzz/common.o tests/gguf_builder.o \
	core/daemon/protocol.o shell/args.o)
NBF_TARGET_OBJ := $(NBF_ALL:%=$(BUILD)/obj/tests/fuzz/fuzz_%.o)

$(BUILD)/obj/tests/fuzz/%.o: FINAL_CFLAGS += $(JANSSON_CFLAGS) -Itests -Icore/daemon -Ishell
$(BUILD)/obj/tests/test_fuzz_corpus.o: FINAL_CFLAGS += -Itests

# gcc, no libFuzzer: the entries are plain functions (fuzz.h)
$(BUILD)/tests/test_fuzz_corpus: $(BUILD)/obj/tests/test_fuzz_corpus.o $(NBF_TARGET_OBJ) $(NBF_OBJ) \
		$(filter-out $(BUILD)/obj/tests/gguf_builder.o,$(TESTUTIL_OBJ)) $(LIBNIBBLE)
	$(call say,LINK,$@)
	@mkdir -p $(@D)
	$(Q)$(CC) $(FINAL_LDFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(JANSSON_LIBS) $(LIBS)

# Built by the sub-make below (BUILD=build/fuzz, clang): the same objects,
# instrumented for libFuzzer, each target with LLVMFuzzerTestOneInput.
$(BUILD)/fuzzers/%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(NBF_OBJ) $(LIBNIBBLE)
	$(call say,LINK,$@)
	@mkdir -p $(@D)
	$(Q)$(CC) $(FINAL_LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(JANSSON_LIBS) $(LIBS)

.PHONY: fuzz fuzz-build fuzz-binaries test-tsan
fuzz-binaries: $(FUZZ_TARGETS:%=$(BUILD)/fuzzers/%)

# The fuzz build runs the scalar reference kernels: clang 14 knows too few
# CPU feature names for the SIMD checks, so __builtin_cpu_supports is made
# 0 here (test_simd compares the SIMD kernels with the reference ones).
NBF_CFLAGS = -fsanitize=fuzzer-no-link -DNBF_LIBFUZZER '-D__builtin_cpu_supports(f)=0'

fuzz-build:
	@command -v $(FUZZ_CC) >/dev/null || \
		{ echo "make fuzz needs clang and libFuzzer (apt-get install clang libclang-rt-dev)"; exit 1; }
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) SANITIZE=address,undefined \
		CFLAGS="$(NBF_CFLAGS)" FUZZ_TARGETS="$(FUZZ_TARGETS)" fuzz-binaries

fuzz: fuzz-build
	@FUZZ_TIME=$(FUZZ_TIME) ./tests/fuzz/run-fuzz $(FUZZ_BUILD) $(FUZZ_TARGETS)

-include $(NBF_TARGET_OBJ:.o=.d) $(BUILD)/obj/tests/fuzz/common.d $(BUILD)/obj/tests/fuzz/seeds.d
.SECONDARY: $(NBF_TARGET_OBJ) $(NBF_OBJ)

# make fuzz-seeds: the generated seeds (tests/fuzz/seeds.c) in $(BUILD)/seeds/<target>/;
# the committed corpus started from these.
$(BUILD)/fuzz-seeds: $(BUILD)/obj/tests/fuzz/seeds.o $(BUILD)/obj/tests/fuzz/common.o \
		$(BUILD)/obj/tests/gguf_builder.o $(LIBNIBBLE)
	$(call say,LINK,$@)
	@mkdir -p $(@D)
	$(Q)$(CC) $(FINAL_LDFLAGS) -o $@ $^ $(LIBS)

.PHONY: fuzz-seeds
fuzz-seeds: $(BUILD)/fuzz-seeds
	@rm -rf $(BUILD)/seeds && $(BUILD)/fuzz-seeds $(BUILD)/seeds && echo "seeds in $(BUILD)/seeds/"

# ThreadSanitizer over the programs with threads: the thread pool
# (test_threads) and nibd, whose poll loop and scheduler worker share the
# connections (test_daemon starts the instrumented nibd).  test_forward
# (multi-threaded forward passes) is clean too but takes about ten minutes
# under TSan: TSAN_TESTS="test_threads test_daemon test_forward".  In build/tsan
# (SANITIZE=thread).  setarch -R turns ASLR off for the run: gcc 12's TSan
# cannot map its shadow memory under the larger mmap randomisation some
# kernels use (vm.mmap_rnd_bits above 28).  tests/tsan.supp lists the
# reports that are not races, each with the reason.
TSAN_TESTS ?= test_threads test_daemon
TSAN_BUILD = build/tsan
TSAN_SETARCH := $(shell setarch -R true >/dev/null 2>&1 && echo setarch -R)

# Reports also go to files (log_path), because the tests send a daemon's
# stderr to /dev/null: any file there fails the run, whatever the tests said.
test-tsan:
	@$(MAKE) --no-print-directory SANITIZE=thread $(TSAN_BUILD)/bin/nibble $(TSAN_BUILD)/bin/nibd \
		$(TSAN_BUILD)/bin/nib $(TSAN_TESTS:%=$(TSAN_BUILD)/tests/%)
	@rm -rf $(TSAN_BUILD)/reports && mkdir -p $(TSAN_BUILD)/reports
	@TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp \
		log_path=$(abspath $(TSAN_BUILD)/reports)/tsan" \
		NIBBLE_BIN=$(abspath $(TSAN_BUILD)/bin) NIBBLE_SRC=$(CURDIR) \
		$(TSAN_SETARCH) ./tests/run-tests $(TSAN_TESTS:%=$(TSAN_BUILD)/tests/%); rc=$$?; \
	for f in $(TSAN_BUILD)/reports/*; do [ -f "$$f" ] && { echo "== $$f:"; cat "$$f"; rc=1; }; done; \
	[ $$rc = 0 ] && echo "ThreadSanitizer: no reports" || { echo "ThreadSanitizer: FAILED"; exit 1; }
