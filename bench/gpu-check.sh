#!/usr/bin/env bash
# The GPU checks of issue 20 as one script, for a lent GPU machine (CUDA driver, libcudnn 9,
# python3 with torch for the side-by-side rows). Run from the repository root:
#   bash bench/gpu-check.sh [OUT_DIR]
# 1. builds with --features cudnn (release);
# 2. tests/gpu.rs with WSSS_REQUIRE_GPU=1 (cuDNN conv and gradients vs the CPU kernels, fp32
#    and TF32; the AdamW kernel vs the CPU update) — fails rather than skips;
# 3. the benchmarks on cuda:0 beside PyTorch (VGG-16 128²/224², DeepLab V3+ 256², EfficientNet);
# 4. the quickstart on cuda:0, timed end to end.
# Everything it prints is also written under OUT_DIR (default target/gpu-check).
set -euo pipefail
out="${1:-target/gpu-check}"
mkdir -p "$out"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/steps.log"; }
log "build (release, --features cudnn)"
cargo build --release --features cudnn --bins --examples 2>&1 | tail -3
log "tests/gpu.rs (WSSS_REQUIRE_GPU=1)"
WSSS_REQUIRE_GPU=1 cargo test --release --features cudnn --test gpu -- --nocapture 2>&1 | tee "$out/gpu-tests.txt" | tail -15
log "bench_classify vgg16 on cuda"
./target/release/examples/bench_classify --device cuda --reps 20 2>&1 | tee "$out/bench_classify.md" | tail -20
log "bench_classify efficientnet-lite0 on cuda"
./target/release/examples/bench_classify --device cuda --reps 20 --arch efficientnet-lite0 2>&1 | tee "$out/bench_classify_effnet.md" | tail -20
log "bench_segment on cuda"
./target/release/examples/bench_segment --device cuda --reps 20 2>&1 | tee "$out/bench_segment.md" | tail -20
log "quickstart on cuda:0"
SECONDS=0
WSSS_REPORTS_DIR="$out/reports" ./target/release/wsss run experiments/quickstart.toml --set device=cuda:0 --work-dir "$out/runs" > "$out/quickstart.log" 2>&1
echo "quickstart cuda:0: ${SECONDS} s" | tee -a "$out/steps.log"
log "done"
