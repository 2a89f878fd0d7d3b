#!/usr/bin/env bash
# Fuzz the native parse/route entry point (Router.route -> NativeCore.parse/pending/route) with
# atheris (libFuzzer) for a bounded time. Exit 0 = no crash and no broken invariant.
#
#   fuzz/run.sh --seconds 60              # CI's short run
#   fuzz/run.sh --seconds 660 --jobs 1    # a long run; extra args after -- go to libFuzzer
#   fuzz/run.sh --no-native-coverage ...  # skip the SanitizerCoverage build of the crate
#
# It installs the `fuzz` extra's packages (pyproject.toml) when atheris is missing, builds an
# instrumented copy of the crate into fuzz/target/ (stable rustc, -Cpasses=sancov-module), and
# runs fuzz/fuzz_route.py on fuzz/corpus/ (the seeds, read only) plus a working corpus.
# A crash or broken invariant leaves its input in fuzz/crashes/ (replay: see fuzz_route.py).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
native_cov=1
work=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --seconds=*) seconds="${1#*=}"; shift ;;
    --no-native-coverage) native_cov=0; shift ;;
    --work) work="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "usage: fuzz/run.sh [--seconds N] [--no-native-coverage] [--work DIR] [-- libFuzzer args]" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
if ! "$PY" -c "import atheris" 2>/dev/null; then
  # The `fuzz` extra's requirements, without reinstalling (and so rebuilding) the project itself.
  mapfile -t reqs < <("$PY" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["fuzz"]))')
  "$PY" -m pip install --quiet "${reqs[@]}"
fi
"$PY" -c "import pipeline._native" || { echo "fuzz: install the project first (pip install -e .)" >&2; exit 2; }

if [ "$native_cov" = 1 ]; then
  # The crate's own code only (cargo rustc passes these flags to the final crate), with debug
  # assertions and overflow checks on, no LTO so the build stays short.
  (cd native && CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo rustc --quiet --release --lib --crate-type cdylib --target-dir ../fuzz/target -- \
      -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
      -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
      -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks)
  export FUZZ_NATIVE_SO="$PWD/fuzz/target/release/lib_native.so"
  # libFuzzer (inside atheris) defines the __sanitizer_cov_* hooks the build calls: preload it.
  export LD_PRELOAD="$("$PY" -c 'import atheris; print(atheris.path())')/ubsan_with_fuzzer.so${LD_PRELOAD:+:$LD_PRELOAD}"
fi

work=${work:-fuzz/corpus-work}
mkdir -p "$work" fuzz/crashes
echo "fuzz: route target for ${seconds}s (native coverage: $native_cov), corpus $work + fuzz/corpus"
exec "$PY" fuzz/fuzz_route.py -max_total_time="$seconds" -max_len=16384 -timeout=30 -rss_limit_mb=4096 \
  -dict=fuzz/cdr.dict -artifact_prefix=fuzz/crashes/ -print_final_stats=1 ${extra[@]+"${extra[@]}"} \
  "$work" fuzz/corpus
