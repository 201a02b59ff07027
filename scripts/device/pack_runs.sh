#!/usr/bin/env bash
# Run THERE at the end of a `run` command: pack what the session needs back from training runs into
# $OUT (which comes back; at most 8 files of 16 MiB each, 64 MiB in all).
#   scripts/device/pack_runs.sh NAME RUN_DIR... [--with-checkpoints]
# Always: each run's train_config.json, metrics.jsonl, final.json, summary.json and the logs. With
# --with-checkpoints: also the latest checkpoint of each run (model.safetensors + config, no optimizer
# state). The archive is NAME.tar.xz, split into 15 MiB parts NAME.tar.xz.part-aa, -ab, ... when
# larger; here: cat NAME.tar.xz.part-* > NAME.tar.xz && tar -xJf NAME.tar.xz.
set -euo pipefail
name="$1"; shift
ckpt=0; dirs=()
for a in "$@"; do if [ "$a" = "--with-checkpoints" ]; then ckpt=1; else dirs+=("$a"); fi; done
list=$(mktemp)
for d in "${dirs[@]}"; do
  find "$d" -maxdepth 1 -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.log' -o -name '*.txt' \) >> "$list"
  if [ "$ckpt" = 1 ] && [ -f "$d/checkpoints/latest" ]; then
    latest="$d/checkpoints/$(cat "$d/checkpoints/latest")"
    find "$latest" -maxdepth 1 -type f ! -name 'optimizer*' >> "$list"
  fi
done
archive="$OUT/$name.tar.xz"
tar -cJf "$archive" -T "$list"
rm -f "$list"
size=$(stat -c %s "$archive")
if [ "$size" -gt $((15 * 1024 * 1024)) ]; then
  split -b 15M "$archive" "$archive.part-" && rm "$archive"
fi
ls -la "$OUT"
