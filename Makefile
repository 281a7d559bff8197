# prism - Layer-4 any-port edge proxy. `make help` lists the targets.

PREFIX   ?= /usr/local
BUILD    ?= build
CC       ?= cc
PYTHON   ?= /usr/bin/python3
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo 0.1)

PKGS     := libnftables libnftnl libmnl yaml-0.1 libcap
WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
            -Wvla -Wimplicit-fallthrough
# OPT: optimisation/debug flags; CFLAGS/LDFLAGS: the user's own additions.
OPT      ?= -O2 -g
XCFLAGS  := -std=gnu11 $(WARN) -D_GNU_SOURCE -DPRISM_VERSION='"$(VERSION)"' -Isrc $(OPT)
ifeq ($(WERROR),1)
XCFLAGS  += -Werror
endif
ifeq ($(SANITIZE),1)
XCFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
endif
XCFLAGS  += $(CFLAGS)
LDLIBS   += $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lnftables -lnftnl -lmnl -lyaml -lcap) -lpthread

LIB_SRC  := $(filter-out src/main.c,$(wildcard src/*.c))
LIB_OBJ  := $(LIB_SRC:src/%.c=$(BUILD)/obj/%.o)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
HDRS     := $(wildcard src/*.h)

.PHONY: all deps test unit demo fuzz asan tsan coverage format format-check \
        install clean help bench

all: $(BUILD)/prism $(UNIT_BIN)

$(BUILD)/obj/%.o: src/%.c $(HDRS) | $(BUILD)/obj
	$(CC) $(XCFLAGS) -c -o $@ $<

$(BUILD)/libprism.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BUILD)/prism: $(BUILD)/obj/main.o $(BUILD)/libprism.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libprism.a $(HDRS) | $(BUILD)/tests
	$(CC) $(XCFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libprism.a $(LDLIBS) -lcmocka

$(BUILD)/obj $(BUILD)/tests:
	mkdir -p $@

deps:
	@sh scripts/deps.sh

# Everything: unit tests (cmocka, each binary one pytest case) and the
# integration tests in network namespaces, in one pytest run.
test: deps
	$(MAKE) all $(BUILD)/loadgen $(BUILD)/rt_bench $(BUILD)/ban_bench $(BUILD)/failmalloc.so $(BUILD)/failsys.so
	PRISM_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q tests/integration $(PYTEST_ARGS)

unit: all
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

# The same tests against an ASan+UBSan build.
asan: deps
	$(MAKE) test BUILD=build-asan SANITIZE=1 OPT="-O1 -g"

# The same tests against a ThreadSanitizer build: data races between the
# workers and the health, resolver, ban and log threads fail the run (a
# unit test exits 66; a prism with a report in its stderr fails the test at
# teardown). The whole suite takes about 8 minutes here; CI runs the
# threads' own tests (TSAN_K in .ci/run).
tsan: deps
	$(MAKE) test BUILD=build-tsan OPT="-O1 -g -fsanitize=thread" LDFLAGS=-fsanitize=thread

# Line coverage of src/ by the whole test suite: a --coverage build in
# build-cov (atomic counters: prism is multi-threaded), the tests, then
# gcovr's table per source file, with the lines that never ran, and the
# same as annotated HTML in build-cov/coverage/.
coverage:
	@sh scripts/deps.sh gcovr
	rm -rf build-cov # make does not track flags: build afresh, no old counts
	$(MAKE) test BUILD=build-cov OPT="-O0 -g --coverage -fprofile-update=atomic" \
	  LDFLAGS=--coverage
	@mkdir -p build-cov/coverage
	gcovr build-cov -r . --filter src/ \
	  --html-details build-cov/coverage/index.html --txt

demo: deps
	$(MAKE) $(BUILD)/prism
	PRISM=$(abspath $(BUILD)/prism) bash demo/demo.sh

# libFuzzer targets (fuzz/fuzz_*.c): the config loader and the PROXY
# protocol parser. `make fuzz` runs each for FUZZ_SECONDS, seeded from the
# config corpus; CI runs it briefly.
FUZZ_SECONDS ?= 30
FUZZ_SRC := $(wildcard fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:fuzz/%.c=$(BUILD)/%)
$(BUILD)/fuzz_%: fuzz/fuzz_%.c $(LIB_SRC) $(HDRS)
	@mkdir -p $(BUILD)
	clang -std=gnu11 -g -O1 -D_GNU_SOURCE -DPRISM_VERSION='"fuzz"' -Isrc \
	  -fsanitize=fuzzer,address,undefined -o $@ $< $(LIB_SRC) $(LDLIBS)
fuzz: deps
	$(MAKE) $(FUZZ_BIN)
	@set -e; for f in $(FUZZ_BIN); do \
	  mkdir -p $(BUILD)/corpus-$${f##*/}; \
	  seeds=; [ "$${f##*/}" = fuzz_cfg ] && seeds="tests/configs/good tests/configs/bad"; \
	  echo "== $$f ($(FUZZ_SECONDS)s)"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	    $(BUILD)/corpus-$${f##*/} $$seeds >$$f.log 2>&1 || { tail -n 60 $$f.log; exit 1; }; \
	  tail -n 1 $$f.log; \
	done

# Benchmarks (docs/benchmarks.md): direct vs HAProxy vs prism in namespaces,
# under 10 minutes; BENCH_ARGS=--quick for a < 90 s smoke run (the test suite
# runs one), --cc ALGO|system for the TCP congestion control (default cubic).
bench: deps
	$(MAKE) $(BUILD)/prism $(BUILD)/loadgen $(BUILD)/rt_bench $(BUILD)/ban_bench
	$(PYTHON) bench/run.py --build $(abspath $(BUILD)) $(BENCH_ARGS)

LOADGEN_SRC := bench/loadgen.c $(wildcard bench/lg_*.c)
$(BUILD)/loadgen: $(LOADGEN_SRC) bench/loadgen.h
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -O2 -D_GNU_SOURCE -Wall -Wextra -o $(BUILD)/loadgen $(LOADGEN_SRC)

# LD_PRELOAD libraries of the fault-injection tests (test_faults.py): never
# sanitized, ASan has an allocator of its own.
$(BUILD)/failmalloc.so: tests/fault/failmalloc.c
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -O2 -Wall -Wextra -shared -fPIC -o $@ $<

$(BUILD)/failsys.so: tests/fault/failsys.c
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -O2 -Wall -Wextra -shared -fPIC -o $@ $< -ldl

$(BUILD)/rt_bench: bench/rt_bench.c src/rt.c $(HDRS)
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -O2 -D_GNU_SOURCE -Isrc -o $(BUILD)/rt_bench bench/rt_bench.c src/rt.c

# The ban thread's ban_add (src/ban.c) against a real table: see its header.
$(BUILD)/ban_bench: bench/ban_bench.c $(BUILD)/libprism.a $(HDRS)
	$(CC) $(XCFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libprism.a $(LDLIBS)

format:
	clang-format -i src/*.c src/*.h tests/unit/*.c tests/fault/*.c fuzz/*.c bench/*.c bench/*.h
format-check:
	clang-format --dry-run --Werror src/*.c src/*.h tests/unit/*.c tests/fault/*.c fuzz/*.c bench/*.c bench/*.h

install: $(BUILD)/prism
	install -D -m 0755 $(BUILD)/prism $(DESTDIR)$(PREFIX)/sbin/prism

clean:
	rm -rf build build-asan build-cov

help:
	@echo "make demo      install deps, build, run prism in namespaces (DEMO_SECONDS=N)"
	@echo "make test      install deps, build, run unit + integration tests"
	@echo "make asan      the tests against an ASan+UBSan build"
	@echo "make tsan      the tests against a ThreadSanitizer build"
	@echo "make coverage  the tests on a --coverage build, then line coverage per source file"
	@echo "make bench     benchmarks vs HAProxy and direct -> docs/benchmarks.md (BENCH_ARGS: --quick, --cc ALGO|system)"
	@echo "make fuzz      run the config-loader and PROXY-parser fuzzers (FUZZ_SECONDS=$(FUZZ_SECONDS))"
	@echo "make install   install build/prism to $(PREFIX)/sbin"
	@echo "make format    clang-format the sources"
