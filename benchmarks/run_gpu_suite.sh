#!/usr/bin/env bash
# One device call: install carried wheels, put the prebuilt (or freshly built) kernels in place,
# run the GPU engine test and the GPU benchmarks; logs and JSON go to $OUT.
# Carry: .whl (prometheus-client, gguf wheels) and .gpubuild (_core/_cuda .so for this python).
set -u
FINAL=${OUT:-/tmp/out}; OUT=/tmp/gpu_suite; mkdir -p "$OUT" "$FINAL"
pack() { cp "$OUT/summary.log" "$FINAL/" 2>/dev/null; tar czf "$FINAL/results.tgz" -C "$OUT" . ; }
trap pack EXIT
T0=$(date +%s); BUDGET=${BUDGET:-560}
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
step() {  # step NAME MAX_SECONDS CMD...
  local name=$1 max=$2; shift 2
  local l; l=$(left); local t=$(( max < l - 5 ? max : l - 5 ))
  if [ "$t" -lt 20 ]; then echo "SKIP $name (no time left)" | tee -a "$OUT/summary.log"; return; fi
  echo "=== $name (timeout $t s) $(date +%T)" | tee -a "$OUT/summary.log"
  local s=$(date +%s)
  timeout "$t" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "--- $name rc=$rc $(( $(date +%s) - s )) s" | tee -a "$OUT/summary.log"
  tail -n 12 "$OUT/$name.log" >> "$OUT/summary.log"
}
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$OUT/setup.log" 2>&1
export PYTHONPATH=$PWD/python:/tmp/site
cp .gpubuild/*.so python/llmcore/ 2>/dev/null
{ python -V; nvidia-smi --query-gpu=name,memory.total --format=csv; git rev-parse --short HEAD; } >> "$OUT/setup.log" 2>&1
if ! python -c "import llmcore._core, llmcore._cuda" >> "$OUT/setup.log" 2>&1; then
  echo "prebuilt modules do not import: building" >> "$OUT/setup.log"
  rm -f python/llmcore/_core*.so python/llmcore/_cuda*.so
  cmake -S . -B build/dev -G Ninja -DLLMCORE_CUDA=ON -DLLMCORE_PYTHON=ON -DLLMCORE_CUDA_ARCHS=90a \
    -Dpybind11_DIR="$(python -c 'import pybind11;print(pybind11.get_cmake_dir())')" >> "$OUT/setup.log" 2>&1 &&
  cmake --build build/dev -j16 >> "$OUT/setup.log" 2>&1 &&
  cp build/dev/cpp/bindings/_core*.so build/dev/cuda/_cuda*.so python/llmcore/ &&
  mkdir -p "$OUT/gpubuild" && cp python/llmcore/_core*.so python/llmcore/_cuda*.so "$OUT/gpubuild/"
fi
python -c "from llmcore import ops; print('cuda_available', ops.cuda_available())" >> "$OUT/setup.log" 2>&1
tail -5 "$OUT/setup.log" >> "$OUT/summary.log"
M8=benchmarks/configs/llama3-8b; SM=benchmarks/configs/smollm2-135m
SUITE=${SUITE:-full}
if [ "$SUITE" = check ]; then
step kernel_tests 150 python -m pytest -q -x -p no:cacheprovider tests/kernels/test_attention_decode.py \
  tests/kernels/test_sampling.py tests/kernels/test_gpu_engine.py
step step_profile_1x128 60 python benchmarks/step_profile.py --model $M8 --batch-size 1 \
  --context 128 --temperature 0 --steps 50 --profile --output-json "$OUT/step_profile_1x128.json"
step step_profile_256x1000 90 python benchmarks/step_profile.py --model $M8 --batch-size 256 \
  --context 1000 --output-json "$OUT/step_profile_256x1000.json"
step lat_8b_bs1 90 python benchmarks/latency.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --skip-hf --output-json "$OUT/lat_8b_bs1.json"
step lat_smol_graphs 45 python benchmarks/latency.py --model $SM --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --skip-hf --output-json "$OUT/lat_smol_graphs.json"
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
exit 0
fi
if [ "$SUITE" = final1 ]; then
step test_gpu_engine 110 python -m pytest -q -s -p no:cacheprovider tests/kernels/test_gpu_engine.py
step lat_8b_bs1 150 python benchmarks/latency.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --hf-num-iters 1 --output-json "$OUT/lat_8b_bs1.json"
step lat_smol_graphs 60 python benchmarks/latency.py --model $SM --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --hf-num-iters 1 --output-json "$OUT/lat_smol_graphs.json"
step lat_smol_eager 40 python benchmarks/latency.py --model $SM --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --skip-hf --enforce-eager --output-json "$OUT/lat_smol_eager.json"
step thr_8b_128 200 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --num-prompts 1000 --hf-max-batch-size 256 --output-json "$OUT/thr_8b_128.json"
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
exit 0
fi
if [ "$SUITE" = final2 ]; then
step thr_8b_1000 560 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 1000 --output-len 1000 --num-prompts 1000 --hf-num-prompts 128 --hf-max-batch-size 128 \
  --output-json "$OUT/thr_8b_1000.json"
step thr_8b_1000_fp8kv 240 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 1000 --output-len 1000 --num-prompts 1000 --kv-cache-dtype fp8 --skip-hf \
  --output-json "$OUT/thr_8b_1000_fp8kv.json"
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
exit 0
fi
if [ "$SUITE" = fp8 ]; then
step kernel_tests 200 python -m pytest -q -s -x -p no:cacheprovider tests/kernels/test_gpu_engine.py \
  tests/kernels/test_attention_decode.py tests/kernels/test_attention_prefill.py tests/kernels/test_cache_kernel.py
step thr_8b_1000_fp8kv 340 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 1000 --output-len 1000 --num-prompts 1000 --kv-cache-dtype fp8 --skip-hf \
  --output-json "$OUT/thr_8b_1000_fp8kv.json"
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
exit 0
fi
if [ "$SUITE" = h200a ]; then
step kernel_tests 120 python -m pytest -q -x -p no:cacheprovider tests/kernels/test_norm_act_rotary.py \
  tests/kernels/test_gpu_engine.py tests/kernels/test_attention_decode.py tests/kernels/test_sampling.py \
  tests/kernels/test_cache_kernel.py
step lat_8b_bs1 100 python benchmarks/latency.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --hf-num-iters 1 --output-json "$OUT/lat_8b_bs1.json"
step lat_smol_graphs 45 python benchmarks/latency.py --model $SM --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --hf-num-iters 1 --output-json "$OUT/lat_smol_graphs.json"
step lat_smol_eager 30 python benchmarks/latency.py --model $SM --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --skip-hf --enforce-eager --output-json "$OUT/lat_smol_eager.json"
step thr_8b_128 100 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --num-prompts 1000 --hf-max-batch-size 256 --output-json "$OUT/thr_8b_128.json"
step thr_8b_1000 170 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 1000 --output-len 1000 --num-prompts 1000 --skip-hf --output-json "$OUT/thr_8b_1000.json"
step thr_8b_1000_s512 170 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 1000 --output-len 1000 --num-prompts 1000 --max-num-seqs 512 --skip-hf \
  --output-json "$OUT/thr_8b_1000_s512.json"
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
exit 0
fi
if [ "$SUITE" = h200b ]; then
step kernel_tests 90 python -m pytest -q -p no:cacheprovider tests/kernels/test_gpu_engine.py \
  tests/kernels/test_attention_prefill.py
step bench_kernels 40 python benchmarks/bench_kernels.py --quick --json "$OUT/bench_kernels.json"
for kv in auto fp8; do
  step step_profile_256x1500_$kv 50 python benchmarks/step_profile.py --model $M8 --batch-size 256 \
    --context 1500 --kv-cache-dtype $kv --profile --output-json "$OUT/step_profile_256x1500_$kv.json"
done
step thr_8b_1000_fp8_s512 290 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 1000 --output-len 1000 --num-prompts 1000 --kv-cache-dtype fp8 --max-num-seqs 512 \
  --hf-num-prompts 256 --hf-max-batch-size 256 --output-json "$OUT/thr_8b_1000_fp8_s512.json"
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
exit 0
fi
if [ "$SUITE" = h200c ]; then
step decode_tests 60 python -m pytest -q -x -p no:cacheprovider tests/kernels/test_attention_decode.py
step bench_kernels 40 python benchmarks/bench_kernels.py --quick --json "$OUT/bench_kernels.json"
step thr_8b_1000_fp8_s512 170 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 1000 --output-len 1000 --num-prompts 1000 --kv-cache-dtype fp8 --max-num-seqs 512 --skip-hf \
  --output-json "$OUT/thr_8b_1000_fp8_s512.json"
step thr_8b_1000 170 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 1000 --output-len 1000 --num-prompts 1000 --skip-hf --output-json "$OUT/thr_8b_1000.json"
step lat_smol_eager 50 python benchmarks/latency.py --model $SM --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --skip-hf --enforce-eager --output-json "$OUT/lat_smol_eager.json"
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
exit 0
fi
if [ "$SUITE" = serving ]; then
python benchmarks/synthetic_tokenizer.py --vocab-size 128256 --out /tmp/tok8b >> "$OUT/setup.log" 2>&1
python -m llmcore.entrypoints.openai.api_server --model $M8 --load-format dummy --dtype bfloat16 \
  --tokenizer /tmp/tok8b --port 8000 > "$OUT/server.log" 2>&1 &
SRV=$!
for i in $(seq 1 150); do
  curl -sf localhost:8000/health > /dev/null && break
  kill -0 $SRV 2> /dev/null || { echo "server exited:"; tail -5 "$OUT/server.log"; } >> "$OUT/summary.log"
  kill -0 $SRV 2> /dev/null || exit 1
  sleep 1
done
echo "server up after $i s" >> "$OUT/summary.log"
for spec in "4 200" "16 400" "inf 500"; do
  set -- $spec
  step serving_rate_$1 150 python benchmarks/serving.py --base-url http://127.0.0.1:8000 \
    --random-input-len 128 --random-output-len 128 --num-prompts $2 --request-rate $1 --ignore-eos \
    --save-result --result-dir "$OUT" --result-filename serving_rate_$1.json
done
kill $SRV
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
exit 0
fi
if [ "$SUITE" = profile ]; then
step bench_kernels 90 python benchmarks/bench_kernels.py --quick --json "$OUT/bench_kernels.json"
step step_profile_256x1000 200 python benchmarks/step_profile.py --model $M8 --batch-size 256 \
  --context 1000 --profile --output-json "$OUT/step_profile_256x1000.json"
step decode_breakdown_8b 60 python benchmarks/decode_breakdown.py --model $M8 --output-json "$OUT/decode_breakdown_8b.json"
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
exit 0
fi
if [ "$SUITE" = full ]; then
step test_gpu_engine 110 python -m pytest -q -s -p no:cacheprovider tests/kernels/test_gpu_engine.py
step lat_8b_bs1 140 python benchmarks/latency.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --hf-num-iters 1 --output-json "$OUT/lat_8b_bs1.json"
step lat_smol_graphs 45 python benchmarks/latency.py --model $SM --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --hf-num-iters 1 --output-json "$OUT/lat_smol_graphs.json"
step lat_smol_eager 40 python benchmarks/latency.py --model $SM --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 --skip-hf --enforce-eager --output-json "$OUT/lat_smol_eager.json"
fi
step decode_breakdown_8b 60 python benchmarks/decode_breakdown.py --model $M8 --output-json "$OUT/decode_breakdown_8b.json"
step thr_8b_128 220 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 128 --output-len 128 --num-prompts 1000 --hf-max-batch-size 256 --output-json "$OUT/thr_8b_128.json"
step thr_8b_1000 400 python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
  --input-len 1000 --output-len 1000 --num-prompts 1000 --skip-hf --output-json "$OUT/thr_8b_1000.json"
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
