#!/bin/sh
# The upstream image builds Redis with protected mode off (it is reached from other containers)
# and runs it as the redis user; Debian's build keeps protected mode on, so turn it off here.
set -eu
if [ "${1:-}" = redis-server ]; then
  set -- "$@" --protected-mode no
  if [ "$(id -u)" = 0 ]; then exec setpriv --reuid=redis --regid=redis --init-groups "$@"; fi
fi
exec "$@"
