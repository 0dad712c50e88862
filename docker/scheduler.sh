#!/bin/sh
# Debian's cron in the foreground, running cddae-retrain on $CDDAE_RETRAIN_SCHEDULE (a crontab
# time field; default nightly at 03:00 UTC). Each run's summary line goes to this container's
# output (`docker compose logs scheduler`).
set -eu
schedule="${CDDAE_RETRAIN_SCHEDULE:-0 3 * * *}"
# cron starts jobs with an empty environment: hand them the settings this container was given,
# in a file only root reads (it holds the Redis URL). cron runs as root (it must, to switch
# users); the job opens this container's output as root, then drops to the
# unprivileged user cddae (cddae-retrain does) for all its work.
umask 077
export -p | grep -E "^export (CDDAE_|PATH=|VIRTUAL_ENV=|PYTHON)" >/etc/cddae.env
umask 022
cat >/etc/cron.d/cddae <<CRON
SHELL=/bin/sh
$schedule root . /etc/cddae.env; /usr/local/bin/cddae-retrain >/proc/1/fd/1 2>/proc/1/fd/2
CRON
chmod 0644 /etc/cron.d/cddae
echo "scheduler: cddae-retrain on '$schedule'"
exec cron -f
