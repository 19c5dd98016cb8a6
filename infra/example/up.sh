#!/usr/bin/env bash
# `task example`: the example shop in the compose deployment (project sessiond, as `task up`),
# one instance per region: eu on 127.0.0.1:${EXAMPLE_EU_PORT:-8090}, us on
# 127.0.0.1:${EXAMPLE_US_PORT:-8091}. The deployment must be up (task up). The app's API key
# is kept in infra/example.env (git-ignored, mode 600) and given to the containers through
# the environment, never written into the repository or an image; while the nodes take it,
# it is kept (so are the shop's sessions: they live in that app's namespace); otherwise (a
# new deployment) `sessiond apps create` makes a new app.
set -euo pipefail
cd "$(dirname "$0")/../.."

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
project=${SESSIOND_PROJECT:-sessiond} # compose project (task up's)
bin=build/docker/sessiond/sessiond
shop=build/docker/example/example     # both built by infra/images.sh
node=127.0.0.1:${EU_1_PORT:-8081}
keyfile=infra/example.env

key=""
[ -f "$keyfile" ] && key=$(sed -n 's/^EXAMPLE_API_KEY=//p' "$keyfile")
if [ -n "$key" ] && EXAMPLE_API_KEY=$key EXAMPLE_SESSIOND=http://$node "$shop" check-key 2>/dev/null; then
  app=${key#sdapp_}
  app=${app%%_*}
else
  # The cluster key proves the apps command to the node (as for `sessiond keys rotate`).
  SESSIOND_CLUSTER_KEY=$(sed -n 's/^SESSIOND_CLUSTER_KEY=//p' infra/.env)
  export SESSIOND_CLUSTER_KEY
  app="example-$(date +%Y%m%d%H%M%S)"
  key=$("$bin" apps create "$app" --http "$node" | tail -n 1)
  case $key in sdapp_*) ;; *) echo "sessiond apps create gave no key" >&2; exit 1 ;; esac
  rm -f "$keyfile" && touch "$keyfile" && chmod 600 "$keyfile"
  printf 'EXAMPLE_API_KEY=%s\n' "$key" >"$keyfile"
fi

EXAMPLE_API_KEY=$key "${compose[@]}" -p "$project" -f infra/compose.yml --profile example \
  up -d --no-build example-eu example-us
echo "the shop: eu http://127.0.0.1:${EXAMPLE_EU_PORT:-8090}  us http://127.0.0.1:${EXAMPLE_US_PORT:-8091}  (app $app; task down removes it all)"
