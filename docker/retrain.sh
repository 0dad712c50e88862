#!/bin/sh
# One retraining run, the command cron runs: the interactions and profiles the API recorded
# (Redis stream) folded into the data, a model trained, gated against the one in service on the
# same holdout and promoted; the API swaps it in by itself. Prints one summary line (the full
# output goes to $CDDAE_DATA_DIR/retrain.log); exit 0 promoted, 1 gated, 2 failed, 3 locked.
set -u
data="${CDDAE_DATA_DIR:-/data}"
name="${CDDAE_DATASET:-ml-100k}"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cddae-init --data-only >>"$data/retrain.log" 2>&1
cddae retrain --data "$data/$name" --models-dir "${CDDAE_MODELS_DIR:-/models}" \
  >"$data/retrain.last.log" 2>&1
code=$?
if [ "$code" -eq 0 ]; then  # keep the models volume bounded: the newest versions and CURRENT
  cddae models gc --models-dir "${CDDAE_MODELS_DIR:-/models}" --keep "${CDDAE_KEEP_VERSIONS:-5}" \
    >>"$data/retrain.last.log" 2>&1 || true
fi
cat "$data/retrain.last.log" >>"$data/retrain.log"
summary=$(grep '^retrain: ' "$data/retrain.last.log" | tail -n 1)
[ -n "$summary" ] || summary="retrain: failed — $(tail -n 1 "$data/retrain.last.log")"
echo "$started $summary (exit $code)"
exit "$code"
