# The Caddy binary alone, built on the host from the Go module proxy at a pinned version
# (infra/images.sh). It is the slow part (minutes), so it gets an image of its own that
# infra/images.sh builds only when it is missing; infra/lb/Dockerfile builds on it.
# Build context: build/docker/caddy/{caddy}
FROM scratch
COPY caddy /caddy
