#!/usr/bin/env bash
# Installs everything diffusiond builds and tests with, from Debian's packages.
# Used by `make deps`, by .ci/run and by the Dockerfile's build stage, so that a fresh
# Debian 12 machine needs nothing else. Idempotent: re-running installs only what is missing.
set -euo pipefail

packages=(
  build-essential pkg-config clang libclang-rt-dev   # C11 toolchain; clang for libFuzzer
  libzmq3-dev libmsgpack-dev                          # control plane: ZeroMQ + msgpack-c
  libevent-dev libsodium-dev                          # HTTP ingress; base64, constant-time compare
  libjpeg62-turbo-dev libpng-dev libwebp-dev          # image codecs
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev   # MP4 output
  libsystemd-dev                                      # sd_notify
  libopenblas-dev                                     # CPU GEMM
  libinih-dev                                         # config file parser
  libjansson-dev                                      # JSON (model configs, safetensors headers)
  libpcre2-dev libutf8proc-dev                        # tokenizer: Unicode regex, NFC normalisation
  libcmocka-dev                                       # C unit-test framework
  python3 python3-pytest python3-pip                  # process and API tests (pytest; pip for openai)
  wrk                                                 # make bench: GET /health requests per second
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
