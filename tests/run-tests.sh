#!/usr/bin/env bash
# Runs diffusiond's tests against one build folder and ends with one summary line,
#   "run-tests: N passed, N failed, N skipped"
# counting every cmocka test, every fuzz smoke run and every pytest test, of both builds.
#   tests/run-tests.sh [--unit-only] BUILD [SANITIZER_BUILD]
# SANITIZER_BUILD, an ASan+UBSan build, runs the unit and process tests again (the fuzz smoke
# is sanitized already).
set -u
cd "$(dirname "$0")/.."

unit_only=0
if [ "${1:-}" = --unit-only ]; then unit_only=1; shift; fi
builds=("${@:-build}")
PYTHON=${PYTHON:-$(test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)}
passed=0 failed=0 skipped=0
failures=()


tally() { # $1: pytest's output; $2: a word of its summary lines ("3 passed, 1 failed in 2.0s"),
          # summed over every pytest run in the output
  grep -E '^[=]* ?[0-9]+ [a-z]+.* in [0-9.]+s' "$1" | grep -Eo "[0-9]+ $2" | cut -d' ' -f1 |
    awk '{ n += $1 } END { print n + 0 }'
}

count() { # $1: file with the output; $2: regex capturing a number; the sum of every match
  sed -nE "s/$2/\1/p" "$1" | awk '{ n += $1 } END { print n + 0 }'
}

sanitizer=0
for build in "${builds[@]}"; do
  if [ $sanitizer -eq 1 ]; then
    # Fail on the first report; LeakSanitizer is on by default.
    export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  fi
  echo "== unit tests ($build)"
  for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    out=$(mktemp)
    "$t" >"$out" 2>&1
    rc=$?
    p=$(count "$out" '^\[  PASSED  \] ([0-9]+) test.*')
    f=$(count "$out" '^\[  FAILED  \] ([0-9]+) test.*')
    s=$(count "$out" '^\[  SKIPPED \] ([0-9]+) test.*')
    p=${p:-0} f=${f:-0} s=${s:-0}
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi # crashed before its summary
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
    printf '  %-28s %3d passed %3d failed %3d skipped\n' "$(basename "$t")" "$p" "$f" "$s"
    if [ "$f" -ne 0 ]; then failures+=("$(basename "$t")"); cat "$out"; fi
    rm -f "$out"
  done

  if [ $unit_only -eq 0 ] && [ $sanitizer -eq 0 ]; then
    echo "== fuzz smoke (${FUZZ_SMOKE_SECONDS:-10}s each)"
    if make --no-print-directory -s BUILD="$build" fuzz-build >/dev/null 2>&1; then
      for f in "$build"/fuzz/fuzz_*; do
        name=$(basename "$f"); corpus=tests/fuzz/corpus/${name#fuzz_}
        work=$(mktemp -d)
        if "$f" -max_total_time="${FUZZ_SMOKE_SECONDS:-10}" "$work" "$corpus" >"$work.log" 2>&1; then
          passed=$((passed + 1)); echo "  $name: ok ($(grep -Eo 'Done [0-9]+ runs' "$work.log" | tail -1))"
        else
          failed=$((failed + 1)); failures+=("$name"); tail -40 "$work.log"
        fi
        rm -rf "$work" "$work.log"
      done
    else
      echo "  fuzz targets need clang with libFuzzer: skipped"; skipped=$((skipped + 1))
    fi
  fi

  if [ $unit_only -eq 0 ]; then
    echo "== process tests ($build)"
    out=$(mktemp)
    DIFFUSIOND_BUILD="$(pwd)/$build" "$PYTHON" -m pytest -p no:cacheprovider -q tests/process 2>&1 | tee "$out"
    # The HTTP API tests (tests/api), counted with the process tests; -m "not slow" skips
    # the long ones where PYTEST_API_ARGS says so.
    echo "== API tests ($build)"
    DIFFUSIOND_BUILD="$(pwd)/$build" "$PYTHON" -m pytest -p no:cacheprovider -q --rootdir tests/api \
      ${PYTEST_API_ARGS:-} tests/api 2>&1 | tee -a "$out"
    p=$(tally "$out" passed) f=$(tally "$out" failed) e=$(tally "$out" error) s=$(tally "$out" skipped)
    p=${p:-0} f=${f:-0} e=${e:-0} s=${s:-0}
    if [ $((p + f + e + s)) -eq 0 ]; then f=1; fi # pytest itself failed
    passed=$((passed + p)) failed=$((failed + f + e)) skipped=$((skipped + s))
    [ $((f + e)) -ne 0 ] && failures+=("process tests")
    rm -f "$out"
  fi
  sanitizer=1
done

[ ${#failures[@]} -ne 0 ] && echo "failed: ${failures[*]}"
echo "run-tests: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
