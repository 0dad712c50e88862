#!/bin/sh
# One retraining run, the command cron runs: the interactions and profiles the API recorded
# (Redis stream) folded into the data, a model trained, gated against the one in service and
# promoted; the API swaps it in by itself. Prints one summary line (the full output is appended
# to $CDDAE_DATA_DIR/retrain.log); exit 0 promoted, 1 gated, 2 failed, 3 locked.
set -u
# As the unprivileged user cddae, whoever starts it (cron starts it as that user; a manual
# `docker compose exec scheduler cddae-retrain` comes as root).
[ "$(id -u)" = 0 ] && exec runuser -u cddae -- "$0" "$@"
data="${CDDAE_DATA_DIR:-/data}"
name="${CDDAE_DATASET:-ml-100k}"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# This run's output on its own: a cron run and a manual one may overlap (one then exits locked).
run_log=$(mktemp "$data/retrain.run.XXXXXX")
cddae-init --data-only >>"$run_log" 2>&1
# --trim: after a promotion, the stream is trimmed back to the oldest mark any version still
# on disk depends on (gc below keeps CDDAE_KEEP_VERSIONS): Redis does not grow for ever.
cddae retrain --data "$data/$name" --models-dir "${CDDAE_MODELS_DIR:-/models}" --trim \
  >>"$run_log" 2>&1
code=$?
summary=$(grep '^retrain: ' "$run_log" | tail -n 1)
if [ "$code" -eq 0 ]; then  # keep the models volume bounded: the newest versions and CURRENT
  cddae models gc --models-dir "${CDDAE_MODELS_DIR:-/models}" --keep "${CDDAE_KEEP_VERSIONS:-5}" \
    >>"$run_log" 2>&1 || true
fi
[ -n "$summary" ] || summary="retrain: failed — $(tail -n 1 "$run_log")"
cat "$run_log" >>"$data/retrain.log"
rm -f "$run_log"
echo "$started $summary (exit $code)"
exit "$code"
