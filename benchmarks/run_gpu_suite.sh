#!/usr/bin/env bash
# One device call: install carried wheels, put the prebuilt (or freshly built) kernels in place,
# then run one suite of GPU tests and benchmarks (SUITE=..., below); logs and JSON go to $OUT.
#   SUITE=h200a bash benchmarks/run_gpu_suite.sh     (RESULTS.md names the suite of each figure)
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
[ -d .whl ] && pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl > "$OUT/setup.log" 2>&1
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
K=tests/kernels

# Jobs. Each is one `step` (its log is $OUT/NAME.log; the benchmarks also write $OUT/NAME.json).
kernel_tests() {  # kernel_tests NAME TIMEOUT [pytest args]
  local name=$1 t=$2; shift 2
  step "$name" "$t" python -m pytest -q -p no:cacheprovider "$@"
}
lat() {  # lat NAME TIMEOUT MODEL [latency.py flags]: batch 1, 128 in / 128 out, bf16
  local name=$1 t=$2 model=$3; shift 3
  step "$name" "$t" python benchmarks/latency.py --model "$model" --load-format dummy --dtype bfloat16 \
    --input-len 128 --output-len 128 --batch-size 1 --num-iters 5 "$@" --output-json "$OUT/$name.json"
}
thr() {  # thr NAME TIMEOUT LEN [throughput.py flags]: Llama-3-8B, 1000 prompts of LEN in / LEN out
  local name=$1 t=$2 len=$3; shift 3
  step "$name" "$t" python benchmarks/throughput.py --model $M8 --load-format dummy --dtype bfloat16 \
    --input-len "$len" --output-len "$len" --num-prompts 1000 "$@" --output-json "$OUT/$name.json"
}
profile() {  # profile NAME TIMEOUT [step_profile.py flags]: Llama-3-8B
  local name=$1 t=$2; shift 2
  step "$name" "$t" python benchmarks/step_profile.py --model $M8 "$@" --output-json "$OUT/$name.json"
}
bench_kernels() { step bench_kernels "$1" python benchmarks/bench_kernels.py --quick --json "$OUT/bench_kernels.json"; }
decode_breakdown() {
  step decode_breakdown_8b "$1" python benchmarks/decode_breakdown.py --model $M8 \
    --output-json "$OUT/decode_breakdown_8b.json"
}
serving() {  # serving "RATE PROMPTS"...: llmcore-server with Llama-3-8B, then benchmarks/serving.py
  # SERVER_PYTHONPATH runs the server from another tree (A/B of two builds, same client);
  # TAG suffixes this run's file names; SPY=seconds samples the server's stacks with py-spy.
  local tag=${TAG:-}
  python benchmarks/synthetic_tokenizer.py --vocab-size 128256 --out /tmp/tok8b >> "$OUT/setup.log" 2>&1
  PYTHONPATH=${SERVER_PYTHONPATH:-$PYTHONPATH} python -m llmcore.entrypoints.openai.api_server \
    --model $M8 --load-format dummy --dtype bfloat16 \
    --tokenizer /tmp/tok8b --port 8000 > "$OUT/server$tag.log" 2>&1 &
  local srv=$! i
  for i in $(seq 1 150); do
    curl -sf localhost:8000/health > /dev/null && break
    if ! kill -0 $srv 2> /dev/null; then
      { echo "server exited:"; tail -5 "$OUT/server$tag.log"; } >> "$OUT/summary.log"
      return 1
    fi
    sleep 1
  done
  echo "server$tag up after $i s" >> "$OUT/summary.log"
  local spec spy=
  for spec in "$@"; do
    set -- $spec
    if [ -n "${SPY_ALL:-}" ] && [ -x /tmp/site/bin/py-spy ]; then  # every thread, core process too
      /tmp/site/bin/py-spy record -p $srv -d "$SPY_ALL" -r 100 --subprocesses --threads --nonblocking \
        -f raw -o "$OUT/spyall_rate_$1_n$2$tag.txt" > "$OUT/spyall_rate_$1_n$2$tag.log" 2>&1 &
      spy=$!
    elif [ -n "${SPY:-}" ] && [ -x /tmp/site/bin/py-spy ]; then  # only the GIL holder's stacks
      /tmp/site/bin/py-spy record -p $srv -d "$SPY" -r 200 --threads --gil --nonblocking -f raw \
        -o "$OUT/spy_rate_$1_n$2$tag.txt" > "$OUT/spy_rate_$1_n$2$tag.log" 2>&1 &
      spy=$!
    fi
    step serving_rate_$1_n$2$tag 150 python benchmarks/serving.py --base-url http://127.0.0.1:8000 \
      --random-input-len 128 --random-output-len 128 --num-prompts $2 --request-rate $1 --ignore-eos \
      ${CLIENT:+--client $CLIENT} \
      --save-result --result-dir "$OUT" --result-filename serving_rate_$1_n$2$tag.json
    [ -n "${spy:-}" ] && { wait $spy; spy=; }
  done
  kill $srv; wait $srv 2> /dev/null
}
variant() {  # variant NAME FILE SED: a copy of this python tree with one edit (A/B of one change)
  rm -rf /tmp/tree_$1 && mkdir -p /tmp/tree_$1 && cp -r python /tmp/tree_$1/ &&
    sed -i "$3" /tmp/tree_$1/$2 && ! cmp -s $2 /tmp/tree_$1/$2 ||
    { echo "variant $1: the edit did not apply" >> "$OUT/summary.log"; return 1; }
}
ab_rounds() {  # ab_rounds NAME: rate inf (300 and 1000 prompts), this tree vs variant NAME, two rounds
  local round
  for round in 1 2; do
    TAG=_new_r$round serving "inf 300" "inf 1000"
    TAG=_$1_r$round SERVER_PYTHONPATH=/tmp/tree_$1/python:/tmp/site serving "inf 300" "inf 1000"
  done
}
worktree() {  # worktree REF: REF's python tree with kernels built for it (reused when cuda/, cpp/ match)
  local dir=/tmp/tree_$1
  git worktree add -f "$dir" "$1" >> "$OUT/setup.log" 2>&1 || return 1
  if git diff --quiet "$1" -- cuda cpp CMakeLists.txt; then
    cp python/llmcore/_core*.so python/llmcore/_cuda*.so "$dir/python/llmcore/"
  else
    (cd "$dir" && cmake -S . -B build/dev -G Ninja -DLLMCORE_CUDA=ON -DLLMCORE_PYTHON=ON \
      -DLLMCORE_CUDA_ARCHS=90a -Dpybind11_DIR="$(python -c 'import pybind11;print(pybind11.get_cmake_dir())')" &&
      cmake --build build/dev -j16 && cp build/dev/cpp/bindings/_core*.so build/dev/cuda/_cuda*.so python/llmcore/) \
      >> "$OUT/build_$1.log" 2>&1 || return 1
  fi
}

case "$SUITE" in
  full)
    kernel_tests test_gpu_engine 110 -s $K/test_gpu_engine.py
    lat lat_8b_bs1 140 $M8 --hf-num-iters 1
    lat lat_smol_graphs 45 $SM --hf-num-iters 1
    lat lat_smol_eager 40 $SM --skip-hf --enforce-eager
    decode_breakdown 60
    thr thr_8b_128 220 128 --hf-max-batch-size 256
    thr thr_8b_1000 400 1000 --skip-hf ;;
  check)  # H100: step profiles after kernel changes
    kernel_tests kernel_tests 150 -x $K/test_attention_decode.py $K/test_sampling.py $K/test_gpu_engine.py
    profile step_profile_1x128 60 --batch-size 1 --context 128 --temperature 0 --steps 50 --profile
    profile step_profile_256x1000 90 --batch-size 256 --context 1000
    lat lat_8b_bs1 90 $M8 --skip-hf
    lat lat_smol_graphs 45 $SM --skip-hf ;;
  final1)  # H100: latency and 128/128 with HF
    kernel_tests test_gpu_engine 110 -s $K/test_gpu_engine.py
    lat lat_8b_bs1 150 $M8 --hf-num-iters 1
    lat lat_smol_graphs 60 $SM --hf-num-iters 1
    lat lat_smol_eager 40 $SM --skip-hf --enforce-eager
    thr thr_8b_128 200 128 --hf-max-batch-size 256 ;;
  final2)  # H100: 1000/1000 with HF on its first 128 prompts
    thr thr_8b_1000 560 1000 --hf-num-prompts 128 --hf-max-batch-size 128
    thr thr_8b_1000_fp8kv 240 1000 --kv-cache-dtype fp8 --skip-hf ;;
  fp8)
    kernel_tests kernel_tests 200 -s -x $K/test_gpu_engine.py $K/test_attention_decode.py \
      $K/test_attention_prefill.py $K/test_cache_kernel.py
    thr thr_8b_1000_fp8kv 340 1000 --kv-cache-dtype fp8 --skip-hf ;;
  profile)
    bench_kernels 90
    profile step_profile_256x1000 200 --batch-size 256 --context 1000 --profile
    decode_breakdown 60 ;;
  serving)
    serving "4 200" "16 400" "inf 500" || exit 1 ;;
  h200serving)  # H200: the serving benchmark with fewer prompts (what device time was left)
    serving "4 100" "16 200" "inf 300" || exit 1 ;;
  h200inf)  # H200: rate inf only (A/B runs of two builds on one machine)
    serving "inf 300" || exit 1 ;;
  h200a)  # H200: kernel tests, latency, 128/128 with HF, 1000/1000 at 256 and 512 sequences
    kernel_tests kernel_tests 120 -x $K/test_norm_act_rotary.py $K/test_gpu_engine.py \
      $K/test_attention_decode.py $K/test_sampling.py $K/test_cache_kernel.py
    lat lat_8b_bs1 100 $M8 --hf-num-iters 1
    lat lat_smol_graphs 45 $SM --hf-num-iters 1
    lat lat_smol_eager 30 $SM --skip-hf --enforce-eager
    thr thr_8b_128 100 128 --hf-max-batch-size 256
    thr thr_8b_1000 170 1000 --skip-hf
    thr thr_8b_1000_s512 170 1000 --max-num-seqs 512 --skip-hf ;;
  h200b)  # H200: step profiles (bf16 / fp8 cache), fp8 1000/1000 with HF at batch 256
    kernel_tests kernel_tests 90 $K/test_gpu_engine.py $K/test_attention_prefill.py
    bench_kernels 40
    for kv in auto fp8; do
      profile step_profile_256x1500_$kv 50 --batch-size 256 --context 1500 --kv-cache-dtype $kv --profile
    done
    thr thr_8b_1000_fp8_s512 290 1000 --kv-cache-dtype fp8 --max-num-seqs 512 \
      --hf-num-prompts 256 --hf-max-batch-size 256 ;;
  h200c)  # H200: after a decode-kernel change
    kernel_tests decode_tests 60 -x $K/test_attention_decode.py
    bench_kernels 40
    thr thr_8b_1000_fp8_s512 170 1000 --kv-cache-dtype fp8 --max-num-seqs 512 --skip-hf
    thr thr_8b_1000 170 1000 --skip-hf
    lat lat_smol_eager 50 $SM --skip-hf --enforce-eager ;;
  h200d)  # H200: tensor-core decode kernel; the throughput runs only once the kernel tests pass
    kernel_tests decode_tests 120 -x $K/test_attention_decode.py
    grep -q " passed" "$OUT/decode_tests.log" && ! grep -q "failed\|error" "$OUT/decode_tests.log" || exit 1
    bench_kernels 60
    thr thr_8b_1000_fp8_s512 170 1000 --kv-cache-dtype fp8 --max-num-seqs 512 --skip-hf
    thr thr_8b_1000 170 1000 --skip-hf ;;
  h200e)  # H200: sampler on the CUDA kernel; fp8 step profile at 512; 1000/1000 fp8 with HF; latency
    kernel_tests kernel_tests 110 -x $K/test_sampling.py $K/test_gpu_engine.py $K/test_attention_prefill.py \
      $K/test_cache_kernel.py
    grep -q " passed" "$OUT/kernel_tests.log" && ! grep -q "failed\|error" "$OUT/kernel_tests.log" || exit 1
    profile step_profile_512x1500_fp8 50 --batch-size 512 --context 1500 --kv-cache-dtype fp8 --profile
    thr thr_8b_1000_fp8_s512 300 1000 --kv-cache-dtype fp8 --max-num-seqs 512 \
      --hf-num-prompts 256 --hf-max-batch-size 256
    lat lat_8b_bs1 70 $M8 --skip-hf ;;
  h200f)  # H200: every kernel test at the final kernels; bf16 1000/1000; 128/128 with HF; SmolLM2
    kernel_tests kernel_tests_all 200 $K --ignore=$K/test_cuda_compiles.py --ignore=$K/test_hip_compiles.py
    thr thr_8b_1000 170 1000 --skip-hf
    thr thr_8b_128 110 128 --hf-max-batch-size 256
    lat lat_smol_graphs 45 $SM --hf-num-iters 1 ;;
  h200g)  # H200: every kernel test at HEAD; both decode kernels; rate inf with the server's stacks sampled
    kernel_tests kernel_tests_all 200 $K --ignore=$K/test_cuda_compiles.py --ignore=$K/test_hip_compiles.py
    bench_kernels 60
    SPY=${SPY:-20} serving "inf 300" || exit 1 ;;
  h200ab)  # H200: rate inf, this tree against REFS (default 8abb14d), interleaved, py-spy on each
    for r in ${REFS:-8abb14d}; do worktree $r || echo "worktree $r failed" >> "$OUT/summary.log"; done
    SPY=${SPY:-15} TAG=_new serving "inf 300"
    for r in ${REFS:-8abb14d}; do
      SPY=${SPY:-15} TAG=_$r SERVER_PYTHONPATH=/tmp/tree_$r/python:/tmp/site serving "inf 300"
    done
    SPY=${SPY:-15} TAG=_new2 serving "4 100" "16 200" "inf 1000" ;;
  h200gc)  # H200: rate inf, this tree against itself with tune_gc_for_serving a no-op, two rounds
    variant nogc python/llmcore/entrypoints/gc_tuning.py 's/^    gc.collect()$/    return/' || exit 1
    ab_rounds nogc ;;
  h200merge)  # H200: rate inf, this tree against itself without merging a lagging stream's snapshots
    variant nomerge python/llmcore/engine/async_engine.py \
      's/and not item.finished and not q.empty():/and not item.finished and False:/' || exit 1
    ab_rounds nomerge ;;
  h200final)  # H200: serving at every rate with the server's GIL sampled; 1000/1000 fp8 at 512
    SPY=${SPY:-15} serving "4 100" "16 200" "inf 300" "inf 1000"
    thr thr_8b_1000_fp8_s512 200 1000 --kv-cache-dtype fp8 --max-num-seqs 512 --skip-hf ;;
  h200serve)  # H200: serving at every rate, 300 and 1000 prompts at rate inf
    serving "4 100" "16 200" "inf 300" "inf 1000" ;;
  h200core1)  # H200, engine core v2 (1/2): GPU engine tests, bs1 latency, 1000 x 128/128 offline,
    # the same with 10% of the requests at n=4
    kernel_tests gpu_engine_tests 150 -x $K/test_gpu_engine.py $K/test_sampling.py
    lat lat_8b_bs1 80 $M8 --skip-hf
    thr thr_8b_128 100 128 --skip-hf
    thr thr_8b_128_n4 100 128 --skip-hf --mixed-n-fraction 0.1 ;;
  h200core2)  # H200, engine core v2 (2/2): offline then served 1000 x 128/128 in one call (the
    # ratio), rate 16, 1000/1000 with the fp8 cache at 512 sequences
    thr thr_8b_128 100 128 --skip-hf
    serving "16 200" "inf 1000"
    thr thr_8b_1000_fp8_s512 170 1000 --kv-cache-dtype fp8 --max-num-seqs 512 --skip-hf ;;
  h200core)  # H200, engine core v2, one call: h200core1 and h200core2 without the second 128/128
    kernel_tests gpu_engine_tests 150 -x $K/test_gpu_engine.py $K/test_sampling.py
    lat lat_8b_bs1 80 $M8 --skip-hf
    thr thr_8b_128 100 128 --skip-hf
    thr thr_8b_128_n4 100 128 --skip-hf --mixed-n-fraction 0.1
    serving "16 200" "inf 1000"
    thr thr_8b_1000_fp8_s512 170 1000 --kv-cache-dtype fp8 --max-num-seqs 512 --skip-hf ;;
  h200client)  # H200: offline 128/128, then served rate 16 and inf with the aiohttp client
    # (vLLM's benchmark client) and rate inf with httpx, the core process sampled by py-spy
    thr thr_8b_128 100 128 --skip-hf
    CLIENT=aiohttp serving "16 200" "inf 1000"
    CLIENT=httpx TAG=_httpx SPY_ALL=8 serving "inf 1000" ;;
  final1207)  # H200, end of the 2026-12-07 session: GPU tests, bs1, offline vs served 128/128
    # (aiohttp client), then structured output on SmolLM2's shapes (dummy weights, its real
    # tokenizer carried in .sotok: no GPU machine has the checkpoint)
    kernel_tests gpu_engine_tests 110 -x $K/test_gpu_engine.py $K/test_sampling.py
    lat lat_8b_bs1 60 $M8 --skip-hf
    thr thr_8b_128 80 128 --skip-hf
    CLIENT=aiohttp serving "16 200" "inf 1000"
    step structured_output 120 python benchmarks/structured_output.py --model .sotok \
      --load-format dummy --tokenizer .sotok --device cuda --dtype bfloat16 --num-prompts 64 \
      --max-tokens 128 --ttft-repeats 3 --output-json "$OUT/structured_output.json" ;;
  so1208a)  # guided decoding + custom all-reduce, call 1 of 2 (the SmolLM2 GGUF travels in two
    # halves, .sow_a here, .sow_b in so1208b on the same warm machine): GPU tests, the
    # host-sync probe, the guided ratio on the 8B shapes against the previous tree (.base)
    kernel_tests gpu_tests 150 -x $K/test_token_bitmask.py $K/test_sampling.py $K/test_gpu_engine.py
    kernel_tests car_tests 150 $K/test_custom_all_reduce.py tests/distributed/test_custom_all_reduce_logic.py \
      tests/distributed/test_group.py tests/executor/test_custom_all_reduce_flag.py
    step sync_probe 40 python benchmarks/guided_mask_sync_probe.py --output-json "$OUT/sync_probe.json"
    cp .gpubuild/*.so .base/python/llmcore/ 2>/dev/null
    python benchmarks/synthetic_tokenizer.py --vocab-size 128256 --out /tmp/tok8b >> "$OUT/setup.log" 2>&1
    for tree in new base; do
      pp=$PYTHONPATH; [ $tree = base ] && pp=$PWD/.base/python:/tmp/site
      PYTHONPATH=$pp step so_8b_$tree 90 python benchmarks/structured_output.py --model $M8 \
        --load-format dummy --tokenizer /tmp/tok8b --device cuda --dtype bfloat16 --backends xgrammar \
        --num-prompts 64 --max-tokens 128 --ttft-repeats 3 --output-json "$OUT/so_8b_$tree.json"
    done ;;
  so1208b)  # call 2 of 2: SmolLM2's real weights (the GGUF rebuilt from both halves), every
    # backend on this tree, xgrammar on the previous tree (.base); the 8B hot path, both trees
    cat .sow_a/part .sow_b/part > /tmp/smollm2.gguf && ls -la /tmp/smollm2.gguf >> "$OUT/setup.log"
    for tree in new base; do
      pp=$PYTHONPATH; bk="xgrammar outlines lm-format-enforcer"
      [ $tree = base ] && pp=$PWD/.base/python:/tmp/site && bk=xgrammar
      PYTHONPATH=$pp step so_smollm2_$tree 170 python benchmarks/structured_output.py \
        --model /tmp/smollm2.gguf --tokenizer .sotok --device cuda --dtype bfloat16 --backends $bk \
        --num-prompts 64 --max-tokens 128 --ttft-repeats 3 --output-json "$OUT/so_smollm2_$tree.json"
    done
    lat lat_8b_bs1 60 $M8 --skip-hf
    thr thr_8b_128 80 128 --skip-hf
    PYTHONPATH=$PWD/.base/python:/tmp/site thr thr_8b_128_base 80 128 --skip-hf ;;
  so1208c)  # one call: the mask-channel probe and tests, then the guided ratio on SmolLM2's
    # shapes (dummy weights, its tokenizer in .sotok), this tree and the previous one (.base)
    step sync_probe 40 python benchmarks/guided_mask_sync_probe.py --output-json "$OUT/sync_probe.json"
    kernel_tests bitmask_tests 90 -x $K/test_token_bitmask.py
    cp .gpubuild/*.so .base/python/llmcore/ 2>/dev/null
    for tree in new base; do
      pp=$PYTHONPATH; [ $tree = base ] && pp=$PWD/.base/python:/tmp/site
      PYTHONPATH=$pp step so_sm_$tree 80 python benchmarks/structured_output.py --model .sotok \
        --load-format dummy --tokenizer .sotok --device cuda --dtype bfloat16 --backends xgrammar \
        --num-prompts 64 --max-tokens 128 --ttft-repeats 3 --output-json "$OUT/so_sm_$tree.json"
    done ;;
  so1209a)  # guided decoding, call 1 of 2: the mask channel's tests (its flag now in a mapped
    # allocation of its own), then SmolLM2's shapes (dummy weights, .sotok) with the channel off
    # and on, each with a cProfile of its runs; stages .sotok and the GGUF's first part (.sow_a)
    # in /tmp for call 2, which carries only the second part
    mkdir -p /tmp/sotok /tmp/gguf && cp .sotok/* /tmp/sotok/ && cp .sow_a/part /tmp/gguf/a
    kernel_tests bitmask_tests 120 -x $K/test_token_bitmask.py
    for ov in off on; do
      flag=; [ $ov = on ] && flag=--guided-decoding-overlap
      step so_sm_$ov 100 python benchmarks/structured_output.py --model /tmp/sotok --load-format dummy \
        --tokenizer /tmp/sotok --device cuda --dtype bfloat16 --backends xgrammar --num-prompts 64 \
        --max-tokens 128 --ttft-repeats 3 $flag --profile-dir "$OUT/prof_$ov" --output-json "$OUT/so_sm_$ov.json"
    done ;;
  so1209b)  # call 2 of 2 on the same warm machine: SmolLM2's real weights (the GGUF rebuilt
    # from /tmp/gguf/a and .sow_b), xgrammar with the channel off, then every backend with it on
    cat /tmp/gguf/a .sow_b/part > /tmp/smollm2.gguf && ls -la /tmp/smollm2.gguf >> "$OUT/setup.log"
    step so_real_off 120 python benchmarks/structured_output.py --model /tmp/smollm2.gguf \
      --tokenizer /tmp/sotok --device cuda --dtype bfloat16 --backends xgrammar --num-prompts 64 \
      --max-tokens 128 --ttft-repeats 3 --output-json "$OUT/so_real_off.json"
    step so_real_on 200 python benchmarks/structured_output.py --model /tmp/smollm2.gguf \
      --tokenizer /tmp/sotok --device cuda --dtype bfloat16 --num-prompts 64 --max-tokens 128 \
      --ttft-repeats 3 --guided-decoding-overlap --output-json "$OUT/so_real_on.json" ;;
  so1209c)  # the mask channel: each way of holding a stream for the host (its own process
    # each), the bitmask tests, then SmolLM2's shapes with the channel off and on (profiled)
    [ -f .gprof/replay.py ] && step fill_replay 60 python .gprof/replay.py .sotok
    step wait_variants 260 python benchmarks/guided_mask_sync_probe.py --variants \
      --output-json "$OUT/wait_variants.json"
    kernel_tests bitmask_tests 120 -x $K/test_token_bitmask.py
    for ov in off on; do
      flag=; [ $ov = on ] && flag=--guided-decoding-overlap
      step so_sm_$ov 100 python benchmarks/structured_output.py --model .sotok --load-format dummy \
        --tokenizer .sotok --device cuda --dtype bfloat16 --backends xgrammar --num-prompts 64 \
        --max-tokens 128 --ttft-repeats 3 $flag --profile-dir "$OUT/prof_$ov" --output-json "$OUT/so_sm_$ov.json"
    done
    python benchmarks/synthetic_tokenizer.py --vocab-size 128256 --out /tmp/tok8b >> "$OUT/setup.log" 2>&1
    for ov in off on; do   # Llama-3-8B's shapes: a step long enough to hide the host's mask work
      flag=; [ $ov = on ] && flag=--guided-decoding-overlap
      step so_8b_$ov 120 python benchmarks/structured_output.py --model $M8 --load-format dummy \
        --tokenizer /tmp/tok8b --device cuda --dtype bfloat16 --backends xgrammar --num-prompts 64 \
        --max-tokens 128 --ttft-repeats 3 $flag --output-json "$OUT/so_8b_$ov.json"
    done ;;
  hot1209)  # the hot path after the session's merges: bs1 and 1000 x 128/128 on Llama-3-8B,
    # this tree then the session's starting tree (.base, its Python with these kernels)
    cp .gpubuild/*.so .base/python/llmcore/ 2>/dev/null
    thr thr_8b_128 70 128 --skip-hf
    PYTHONPATH=$PWD/.base/python:/tmp/site thr thr_8b_128_base 70 128 --skip-hf
    lat lat_8b_bs1 50 $M8 --skip-hf ;;
  so1210a)  # guided decoding's mask filled off the loop's thread (native xgrammar fill), call 1
    # of 2: its tests, the host-only guided benchmark and SmolLM2's shapes (dummy weights)
    # for this tree and the previous one (.base), then the hot path; stages .sotok and the
    # GGUF's first part (.sow_a) in /tmp for call 2
    mkdir -p /tmp/sotok /tmp/gguf && cp .sotok/* /tmp/sotok/ && cp .sow_a/part /tmp/gguf/a
    cp .gpubuild/*.so .base/python/llmcore/ 2>/dev/null; rm -rf /tmp/basepy; cp -r .base/python /tmp/basepy
    kernel_tests guided_tests 150 -x tests/structured_output/test_native_fill.py \
      $K/test_token_bitmask.py
    for tree in new base; do
      pp=$PYTHONPATH; [ $tree = base ] && pp=$PWD/.base/python:/tmp/site
      PYTHONPATH=$pp step guided_host_$tree 60 python benchmarks/bench_guided_host.py \
        --model /tmp/sotok --num-prompts 256 --output-json "$OUT/guided_host_$tree.json"
      for ov in off on; do
        flag=; [ $ov = on ] && flag=--guided-decoding-overlap
        PYTHONPATH=$pp step so_sm_${tree}_$ov 90 python benchmarks/structured_output.py \
          --model /tmp/sotok --load-format dummy --tokenizer /tmp/sotok --device cuda --dtype bfloat16 \
          --backends xgrammar --num-prompts 64 --max-tokens 128 --ttft-repeats 3 $flag \
          --output-json "$OUT/so_sm_${tree}_$ov.json"
      done
    done
    thr thr_8b_128 70 128 --skip-hf
    PYTHONPATH=$PWD/.base/python:/tmp/site thr thr_8b_128_base 70 128 --skip-hf
    lat lat_8b_bs1 50 $M8 --skip-hf ;;
  so1210b)  # call 2 of 2 on the same warm machine: SmolLM2's real weights (the GGUF rebuilt
    # from /tmp/gguf/a and .sow_b), xgrammar, this tree and .base, the channel off and on,
    # twice each (the runs vary), then every backend on this tree
    cat /tmp/gguf/a .sow_b/part > /tmp/smollm2.gguf && ls -la /tmp/smollm2.gguf >> "$OUT/setup.log"
    for rep in 1 2; do
      for tree in new base; do
        pp=$PYTHONPATH; [ $tree = base ] && pp=/tmp/basepy:/tmp/site
        for ov in off on; do
          flag=; [ $ov = on ] && flag=--guided-decoding-overlap
          PYTHONPATH=$pp step so_real_${tree}_${ov}_$rep 70 python benchmarks/structured_output.py \
            --model /tmp/smollm2.gguf --tokenizer /tmp/sotok --device cuda --dtype bfloat16 \
            --backends xgrammar --num-prompts 64 --max-tokens 128 --ttft-repeats 3 $flag \
            --output-json "$OUT/so_real_${tree}_${ov}_$rep.json"
        done
      done
    done
    step so_real_all 150 python benchmarks/structured_output.py --model /tmp/smollm2.gguf \
      --tokenizer /tmp/sotok --device cuda --dtype bfloat16 --num-prompts 64 --max-tokens 128 \
      --ttft-repeats 3 --output-json "$OUT/so_real_all.json" ;;
  so1211d)  # one call: the native accepts + fill against .base (SmolLM2's shapes, dummy
    # weights): its tests, the host-only benchmark, the channel on with a profile per tree
    cp .gpubuild/*.so .base/python/llmcore/ 2>/dev/null; rm -rf /tmp/basepy; cp -r .base/python /tmp/basepy
    kernel_tests guided_tests 40 -x tests/structured_output/test_native_fill.py
    for tree in new base; do
      pp=$PYTHONPATH; [ $tree = base ] && pp=/tmp/basepy:/tmp/site
      PYTHONPATH=$pp step guided_host_$tree 30 python benchmarks/bench_guided_host.py \
        --model .sotok --num-prompts 256 --repeats 2 --output-json "$OUT/guided_host_$tree.json"
      PYTHONPATH=$pp step so_sm_${tree}_prof 45 python benchmarks/structured_output.py --model .sotok \
        --load-format dummy --tokenizer .sotok --device cuda --dtype bfloat16 --backends xgrammar \
        --num-prompts 64 --max-tokens 128 --ttft-repeats 1 --guided-decoding-overlap \
        --profile-dir "$OUT/prof_$tree" --output-json "$OUT/so_sm_${tree}_prof.json"
    done ;;
  h200spy)  # H200: rate inf, 1000 prompts, the front-end process's GIL holder sampled with py-spy
    SPY=${SPY:-20} serving "inf 1000" ;;
  *)
    echo "unknown SUITE=$SUITE" | tee -a "$OUT/summary.log"
    exit 2 ;;
esac
echo "total $(( $(date +%s) - T0 )) s" >> "$OUT/summary.log"
