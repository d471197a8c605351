#!/bin/sh
# The official image's Redis is built with protected mode off (its network is the container's);
# Debian's keeps it on, which refuses every client from another container without a password.
set -eu
if [ "${1:-}" = "redis-server" ]; then
  shift
  exec redis-server --protected-mode no --bind 0.0.0.0 "$@"
fi
exec "$@"
