#!/bin/sh
# Serves /etc/nginx/conf.d/*.conf (mounted by compose) from a copy in /run/nginx-conf.d. nginx
# 1.22 rejects the `resolve` parameter of upstream `server` lines (open-source nginx has it from
# 1.27.3), so the copy drops it: the name is then resolved once, at start, to every address it
# has then. Said on stderr so nobody mistakes this for the upstream behaviour.
set -eu
mkdir -p /run/nginx-conf.d
rm -f /run/nginx-conf.d/*.conf
for f in /etc/nginx/conf.d/*.conf; do
  [ -e "$f" ] || continue
  out=/run/nginx-conf.d/$(basename "$f")
  sed -E 's/^([[:space:]]*server[[:space:]][^;]*)[[:space:]]resolve([[:space:]]*;)/\1\2/' "$f" >"$out"
  if ! cmp -s "$f" "$out"; then
    echo "stand-in nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'): dropped 'resolve' from upstream servers in $f (resolved once at start)" >&2
  fi
done
exec "$@"
