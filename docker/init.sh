#!/bin/sh
# First start of the stack: the data set in place (copied from /seed when it holds it, else
# downloaded), then, when no model is in service yet, the first one trained and promoted by the
# same job cron runs. Idempotent: a second start finds the data and the model and does nothing.
#   cddae-init              data and first model
#   cddae-init --data-only  data only (the retraining job calls this)
set -eu
data="${CDDAE_DATA_DIR:-/data}"
models="${CDDAE_MODELS_DIR:-/models}"
name="${CDDAE_DATASET:-ml-100k}"
if [ ! -e "$data/$name" ]; then
  if [ -d "/seed/$name" ] && [ -n "$(ls -A "/seed/$name")" ]; then
    cddae data fetch "$name" --dest "$data" --from "/seed/$name"
  else
    cddae data fetch "$name" --dest "$data"
  fi
fi
[ "${1:-}" = "--data-only" ] && exit 0
if [ "$(id -u)" = 0 ]; then
  # Jobs run as the unprivileged user cddae: the volumes are theirs. A write token, unless one
  # is given (or writes are deliberately open), generated once, readable by that user only.
  chown -R cddae "$data" "$models"
  if [ -z "${CDDAE_WRITE_TOKEN:-}" ] \
      && [ "${CDDAE_OPEN_WRITES:-false}" = false ] && [ ! -s /secrets/write-token ]; then
    umask 077
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >/secrets/write-token.tmp
    chown cddae /secrets/write-token.tmp
    mv /secrets/write-token.tmp /secrets/write-token
    echo "init: generated the write token (shown once; it stays in the secrets volume):"
    echo "init:   CDDAE_WRITE_TOKEN=$(cat /secrets/write-token)"
    umask 022
  fi
  exec runuser -u cddae -- "$0" "$@"
fi
if [ -s "$models/CURRENT" ]; then
  echo "init: $(cat "$models/CURRENT") is in service; nothing to do"
  exit 0
fi
echo "init: no model in service; training the first one"
exec cddae-retrain
