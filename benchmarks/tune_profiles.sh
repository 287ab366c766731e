#!/usr/bin/env bash
# Tune the shipped rescoring profiles on the synthetic dev set (never on the real dev or test speech).
# usage: benchmarks/tune_profiles.sh [DATA_DIR]   (build the data first: make data)
set -euo pipefail
DATA=${1:-work-data}
for asr in whisper-tiny.en whisper-base; do
  /usr/bin/time -f "$asr: %e s" llmasr tune "$DATA/synth_dev.jsonl" --asr "$asr" --threads 2 \
    --lm none --lm gemma-3-270m --lm gemma-3-270m-rescorer --lm qwen2.5-0.5b-instruct --lm en-us-3gram \
    --lm smollm2-135m-instruct \
    -o src/llmasr/profiles
done
