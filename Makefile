# diffusiond build. `make run` starts the service on its default config; `make test` runs every
# test (unit, fuzz smoke, process tests, then the unit and process tests again under ASan+UBSan).
# Dependencies come from Debian's packages: `make deps` (tools/install-deps.sh) installs them.

BUILD   ?= build
CC      ?= cc
PYTHON  ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
CONFIG  ?= conf/diffusiond.conf

PKGS    := libzmq msgpack inih libsystemd openblas jansson libpcre2-8 libutf8proc libpng libjpeg libwebp libevent libsodium
# Sanitizer and debug builds are the same sources with other flags, in their own folder.
MODE    ?= release
ifeq ($(MODE),asan)
  OPTFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  LDSAN    := -fsanitize=address,undefined
else ifeq ($(MODE),debug)
  OPTFLAGS := -O0 -g3
else
  OPTFLAGS := -O2 -g
endif

CFLAGS  ?=
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wno-unused-parameter -fopenmp $(OPTFLAGS) \
           -I. $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -fopenmp -lm -lpthread -lrt
LDFLAGS += $(LDSAN)

# CUDA: built where the toolkit is installed (nvcc on PATH or under /usr/local/cuda), skipped
# with a message elsewhere. CUDA_HOME=none forces a build without it.
NVCC      ?= $(shell command -v nvcc 2>/dev/null || (test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc))
ifeq ($(CUDA_HOME),none)
  NVCC :=
endif
ifneq ($(NVCC),)
  CUDA_HOME ?= $(abspath $(dir $(NVCC))/..)
  CFLAGS    += -DDIFFUSIOND_HAVE_CUDA -isystem $(CUDA_HOME)/include
  LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart
  CUDA_NOTE := with CUDA ($(CUDA_HOME))
else
  CUDA_NOTE := without CUDA: no nvcc on PATH or under /usr/local/cuda; GPU pools are disabled
endif

LIB_SRCS   := $(wildcard ipc/*.c) supervisor/config.c $(wildcard nn/*.c) $(wildcard text/*.c) $(wildcard codec/*.c) $(wildcard pipeline/*.c)
SUP_SRCS   := $(filter-out supervisor/config.c,$(wildcard supervisor/*.c))
UNIT_SRCS  := $(wildcard tests/unit/test_*.c)
TSTAGE_SRCS:= $(wildcard tests/stages/*.c)
BENCH_SRCS := $(wildcard tools/bench/*.c)
CLI_SRCS   := $(wildcard cli/*.c)

# Each folder stages/NAME/ with C sources is one stage program, build/diffusiond-NAME.
STAGE_NAMES:= $(sort $(notdir $(patsubst %/,%,$(dir $(wildcard stages/*/*.c)))))
STAGE_BINS := $(STAGE_NAMES:%=$(BUILD)/diffusiond-%)

LIB        := $(BUILD)/libdiffusiond.a
LIB_OBJS   := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
SUP_OBJS   := $(SUP_SRCS:%.c=$(BUILD)/obj/%.o)
UNIT_BINS  := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_BINS := $(BENCH_SRCS:tools/bench/%.c=$(BUILD)/bench/%)
TSTAGE_BIN := $(BUILD)/tests/diffusiond-teststage
CLI_BINS   := $(CLI_SRCS:cli/%.c=$(BUILD)/diffusiond-%)
BINS       := $(BUILD)/diffusiond $(TSTAGE_BIN) $(UNIT_BINS) $(BENCH_BINS) $(CLI_BINS) $(STAGE_BINS)

.PHONY: fuzz-build all deps run test test-unit test-process asan fuzz bench check-config clean cuda-note
.DEFAULT_GOAL := all
# Keep object files that only feed a pattern rule's link (make would delete them).
.SECONDARY:

all: cuda-note $(BINS)

cuda-note:
	@echo "diffusiond: building $(MODE) $(CUDA_NOTE)"

deps:
	tools/install-deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(BUILD)/diffusiond: $(SUP_OBJS) $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(TSTAGE_BIN): $(TSTAGE_SRCS:%.c=$(BUILD)/obj/%.o) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -lcmocka -o $@

$(BUILD)/diffusiond-%: $(BUILD)/obj/cli/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

define stage_rule
$(BUILD)/diffusiond-$(1): $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard stages/$(1)/*.c)) $(LIB)
	$$(CC) $$(LDFLAGS) $$^ $$(LDLIBS) -o $$@
endef
$(foreach s,$(STAGE_NAMES),$(eval $(call stage_rule,$(s))))

$(BUILD)/bench/%: $(BUILD)/obj/tools/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

run: deps all
	$(BUILD)/diffusiond -c $(CONFIG)

check-config: all
	$(BUILD)/diffusiond -t -c $(CONFIG)

# The whole suite on the release build, then again on the sanitizer build; one summary line.
test: deps all
	$(MAKE) --no-print-directory MODE=asan BUILD=build-asan all
	tests/run-tests.sh $(BUILD) build-asan

test-unit: all
	tests/run-tests.sh --unit-only $(BUILD)

asan:
	$(MAKE) --no-print-directory MODE=asan BUILD=build-asan all
	tests/run-tests.sh build-asan

# libFuzzer targets (clang). `make fuzz` runs each for FUZZ_SECONDS; make test runs a short smoke.
FUZZ_SECONDS ?= 60
FUZZ_SRCS    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS    := $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz/%)
FUZZ_CFLAGS  := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -I. \
                $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_LIBSRC  := $(LIB_SRCS)

$(BUILD)/fuzz/%: tests/fuzz/%.c $(FUZZ_LIBSRC) $(wildcard ipc/*.h supervisor/*.h nn/*.h text/*.h codec/*.h pipeline/*.h tests/common/*.h)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -UDIFFUSIOND_HAVE_CUDA $< $(FUZZ_LIBSRC) $(filter-out -lcudart -fopenmp,$(LDLIBS)) -o $@

fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	@for f in $(FUZZ_BINS); do \
	  name=$$(basename $$f); mkdir -p $(BUILD)/fuzz/corpus-$$name; \
	  echo "fuzz: $$name for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) $(BUILD)/fuzz/corpus-$$name tests/fuzz/corpus/$${name#fuzz_} || exit 1; \
	done

bench: all
	tools/bench/run.sh $(BUILD)

clean:
	rm -rf build build-asan
