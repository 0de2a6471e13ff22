#!/bin/sh
# Renders /etc/nginx/templates/*.template into /etc/nginx/conf.d/ with the
# environment (only ${SPLITGPT_API_URL}: nginx's own $variables stay), as the
# official nginx image does, then runs the command (nginx in the foreground).
set -eu
: "${SPLITGPT_API_URL:=http://api:8000}"
export SPLITGPT_API_URL
for template in /etc/nginx/templates/*.template; do
    [ -e "$template" ] || continue
    out="/etc/nginx/conf.d/$(basename "$template" .template)"
    envsubst '${SPLITGPT_API_URL}' <"$template" >"$out"
done
exec "$@"
