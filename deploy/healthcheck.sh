#!/bin/bash
# Container health probe without curl: GET a path (default /healthz) from the
# local pullthrough over bash's /dev/tcp and succeed only on HTTP 200. The
# port comes from PULLTHROUGH_LISTEN (default 0.0.0.0:5000), so the probe
# follows the listener. Usage: pullthrough-healthcheck [/healthz|/readyz]
set -eu
path="${1:-/healthz}"
listen="${PULLTHROUGH_LISTEN:-0.0.0.0:5000}"
port="${listen##*:}"
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nUser-Agent: pullthrough-healthcheck\r\n\r\n' "$path" >&3
IFS=' ' read -r -t 5 _protocol status _reason <&3
[ "${status:-}" = 200 ]
