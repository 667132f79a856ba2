#!/bin/sh
# CPU decode time on tiny: dense vs ffn-skip vs ffn-drop at 25%, interleaved (docs/adaptive.md).
set -e
llmc compile tiny --target cpu -o /tmp/densecpu
llmc compile tiny --target cpu --passes ffn-skip:ratio=0.25 -o /tmp/skipcpu
llmc compile tiny --target cpu --passes ffn-drop:ratio=0.25 -o /tmp/dropcpu
for i in 1 2 3 4 5; do
  for m in densecpu skipcpu dropcpu; do
    printf '%s ' "$m"
    llmc bench /tmp/$m --json --new-tokens 128 --prompt-len 32 --repeat 5 | grep decode_ms_per_token
  done
done
