#!/usr/bin/env bash
# The GPU benchmark in one command: installs what is missing, then runs `vitrine bench embed`
# (ConvNeXt-Base, 224 px, bf16, random weights) and prints one JSON line: pipeline images/s,
# raw forward images/s at the same batch, their ratio, batched/batch-1, peak GPU memory and the
# share of the chip's bf16 peak. JPEGs are decoded on the GPU (`--decode device`, nvJPEG):
# Pillow on a few cores cannot keep up with thousands of images/s. `--device cpu --model
# test_vit --precision fp32` runs anywhere (the test suite does that, so the script is known to
# work where no GPU is at hand).
#
# usage: vitrine/bench/gpu.sh [--device cuda] [--model convnext_base] [--precision bf16]
#          [--decode "device pillow"] [--n 2048] [--batch-size "32 64 128"] [--gflop-per-image 30.8]
#          [--peak-tflops T]
set -euo pipefail

device=cuda model=convnext_base precision=bf16 decode=device n=2048 batch=128 gflop=30.8 peak=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --model) model=$2; shift 2 ;;
        --precision) precision=$2; shift 2 ;;
        --decode) decode=$2; shift 2 ;;
        --n) n=$2; shift 2 ;;
        --batch-size) batch=$2; shift 2 ;;
        --gflop-per-image) gflop=$2; shift 2 ;;
        --peak-tflops) peak=$2; shift 2 ;;
        *) echo "gpu.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VITRINE_VENV:-.venv}

# What a bare machine lacks: the project (its torch wheel from PyPI brings CUDA), Redis and
# Postgres binaries (the benchmark starts private instances of both when none answers).
if [ ! -x "$venv/bin/vitrine" ]; then
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -e .
fi
if ! command -v redis-server >/dev/null || ! { command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server postgresql >/dev/null
    else
        echo "gpu.sh: redis-server and postgresql are needed (apt-get install redis-server postgresql)" >&2
    fi
fi
if [ "$device" != cpu ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
fi

# `--batch-size` and `--decode` take space-separated lists ("32 64 128", "device pillow"): one
# JSON line per combination, each with bf16 (or the precision asked) against fp32 in its run.
for one_batch in $batch; do
    for one_decode in $decode; do
        result=$("$venv/bin/vitrine" bench embed --model "$model" --device "$device" --precision "$precision" \
            --decode "$one_decode" --n "$n" --batch-size "$one_batch" --json)
        echo "$result" | "$venv/bin/python" -m vitrine.bench.gpu --gflop-per-image "$gflop" ${peak:+--peak-tflops "$peak"}
    done
done
