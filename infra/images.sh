#!/usr/bin/env bash
# Builds the deployment's images from binaries built here (no registry is needed):
#   sessiond/sessiond:local   scratch + the static sessiond binary      (infra/Dockerfile)
#   sessiond/caddy:$CADDY     scratch + Caddy from the Go module proxy (infra/lb/caddy.Dockerfile),
#                             built only when missing: it takes minutes
#   sessiond/lb:local         that Caddy + infra/lb/Caddyfile          (infra/lb/Dockerfile)
#   sessiond/example:local    scratch + the example shop's static binary (infra/example/Dockerfile)
# `task docker:build` runs it; so does .ci/run before the quick chaos suite.
set -euo pipefail
cd "$(dirname "$0")/.."

CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
ctx=build/docker
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} # scratch images need nothing BuildKit adds
export CGO_ENABLED=0

build_image() { # tag dockerfile context [args…]
  local tag=$1 file=$2 dir=$3
  shift 3
  local log
  log=$(mktemp)
  # The engine's legacy builder warns that it is deprecated: keep that out of the way
  # unless the build fails.
  if ! docker build -q --label io.sessiond.image=1 -f "$file" -t "$tag" "$@" "$dir" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
  echo "   $tag $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
}

rm -rf "$ctx"
mkdir -p "$ctx/sessiond/data" "$ctx/caddy" "$ctx/lb/home/data" "$ctx/lb/home/config" "$ctx/example"

t0=$SECONDS
echo "== sessiond $VERSION (static, CGO_ENABLED=0)"
go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$ctx/sessiond/sessiond" ./edge/cmd/sessiond
build_image sessiond/sessiond:local infra/Dockerfile "$ctx/sessiond"

if docker image inspect "sessiond/caddy:$CADDY_VERSION" >/dev/null 2>&1; then
  echo "== caddy $CADDY_VERSION: image sessiond/caddy:$CADDY_VERSION present, not rebuilt"
else
  echo "== caddy $CADDY_VERSION from the Go module proxy (a few minutes, once)"
  # go install pkg@version builds in the module's own go.mod: nothing touches ours.
  GOBIN="$PWD/$ctx/caddy" GOFLAGS=-buildvcs=false \
    go install -trimpath -ldflags "-s -w" "github.com/caddyserver/caddy/v2/cmd/caddy@$CADDY_VERSION"
  build_image "sessiond/caddy:$CADDY_VERSION" infra/lb/caddy.Dockerfile "$ctx/caddy"
fi

cp infra/lb/Caddyfile "$ctx/lb/"
build_image sessiond/lb:local infra/lb/Dockerfile "$ctx/lb" --build-arg "CADDY_IMAGE=sessiond/caddy:$CADDY_VERSION"

echo "== example shop (infra/example, its own module)"
(cd infra/example && go build -trimpath -ldflags "-s -w" -o "../../$ctx/example/example" .)
build_image sessiond/example:local infra/example/Dockerfile "$ctx/example"

# Earlier builds of ours that lost their tag.
docker image prune -f --filter label=io.sessiond.image=1 >/dev/null
echo "== images built in $((SECONDS - t0))s"
