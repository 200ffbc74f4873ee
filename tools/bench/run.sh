#!/usr/bin/env bash
# make bench: prints the machine, then each benchmark with its baseline from the same run.
set -eu
build=${1:-build}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
echo
"$build/bench/bench_handoff"
echo
"$build/bench/bench_handoff" --cold
