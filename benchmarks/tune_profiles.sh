#!/usr/bin/env bash
# Tune the shipped rescoring profiles on the synthetic dev set (never on the real dev or test speech).
# usage: benchmarks/tune_profiles.sh [DATA_DIR]   (build the data first: make data)
set -euo pipefail
DATA=${1:-work-data}
OUT=src/llmasr/profiles
for asr in whisper-tiny.en whisper-base; do
  for lm in none gemma-3-270m qwen2.5-0.5b-instruct en-us-3gram smollm2-135m-instruct; do
    echo "== $asr + $lm"
    /usr/bin/time -f "%e s" llmasr tune "$DATA/synth_dev.jsonl" --asr "$asr" --lm "$lm" --threads 2 \
      -o "$OUT/$asr+$lm.yaml"
  done
done
