#!/usr/bin/env bash
# Builds llama.cpp's command-line tools into .llamacpp/bin (benchmark tier, not CI): the source is
# the llama.cpp that the PyPI sdist of llama-cpp-python vendors, so nothing but PyPI is needed.
# Used to judge `cat-quantize --export gguf` with llama.cpp itself (see
# benchmarks/results/gguf_export_*.md). Idempotent: a second run with every tool present for the
# same version does nothing. About 6 min on a 2-core AMD EPYC (2026-12-06; llama-cli links the
# server library).
#   LLAMA_CPP_PYTHON_VERSION=0.3.36  the sdist to take llama.cpp from (default below)
#   JOBS=N                           parallel compile jobs (default: all cores)
# Shared machines: run it as `flock /tmp/cat-heavy.lock bash tools/build_llamacpp.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
root=.llamacpp
bin="$root/bin"
# llama-cli (chat), llama-completion (one prompt, no chat template), llama-simple (greedy, no
# sampling options) and llama-tokenize (to compare tokenizations) besides the issue's list
tools=(llama-cli llama-completion llama-simple llama-tokenize llama-perplexity llama-quantize llama-imatrix llama-bench)

built() {
  [ "$(cat "$root/VERSION" 2>/dev/null)" = "$version" ] || return 1
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
}
if built; then
  echo "llama.cpp tools of llama-cpp-python $version already in $bin"
  exit 0
fi

python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
mkdir -p "$root/src"
sdist="$root/src/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  "$python" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$root/src"
fi
src="$root/src/llama_cpp_python-$version"
if [ ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]; then
  rm -rf "$src"
  tar xzf "$sdist" -C "$root/src"
fi

gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
# static, CPU only, tuned to this machine (GGML_NATIVE); no network at build time (no OpenSSL,
# no prebuilt web UI download), no tests
cmake -S "$src/vendor/llama.cpp" -B "$root/build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON \
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_UI=OFF
cmake --build "$root/build" --target "${tools[@]}" -j "${JOBS:-$(nproc)}"

mkdir -p "$bin"
for t in "${tools[@]}"; do
  cp "$root/build/bin/$t" "$bin/$t"
done
echo "$version" > "$root/VERSION"
echo "built ${tools[*]} (llama.cpp of llama-cpp-python $version) in $bin"
