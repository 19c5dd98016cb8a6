#!/bin/sh
# backup-load.sh: what a backup costs the node it is taken from. One node on a seeded data
# file; a paced write load (sessiond bench, patch and send) measured in interleaved rounds
# without and with backups running back to back; prints each round's write p99 and each
# backup's throughput. Usage: infra/bench/backup-load.sh [BIN] (default: builds one).
# Environment: USERS (seeded users, 30000; 4 sessions each), RATE (requests/s, 300),
# ROUNDS (pairs of rounds, 3), SECONDS_PER_ROUND (15).
set -eu
BIN=${1:-}
WORK=$(mktemp -d)
trap 'kill $NODE 2>/dev/null; wait $NODE 2>/dev/null; rm -rf "$WORK"' EXIT
if [ -z "$BIN" ]; then
	BIN=$WORK/sessiond
	go build -o "$BIN" ./edge/cmd/sessiond
fi
USERS=${USERS:-30000} RATE=${RATE:-300} ROUNDS=${ROUNDS:-3} SECS=${SECONDS_PER_ROUND:-15}
"$BIN" keygen >"$WORK/key"
"$BIN" bench seed --data "$WORK/data" --users "$USERS" --sessions-per-user 4 >/dev/null 2>&1
ls -l "$WORK/data/sessiond.db" | awk '{printf "data file: %.1f MB\n", $5/1e6}'
HTTP=127.0.0.1:$((20000 + $$ % 10000))
"$BIN" --data "$WORK/data" --http "$HTTP" --gossip 127.0.0.1:$((30000 + $$ % 10000)) \
	--sync 127.0.0.1:$((40000 + $$ % 10000)) --cluster-key-file "$WORK/key" \
	--messages-per-user 1000000 --signups-per-address 1000000 --login-per-account 1000000 \
	--login-per-address 1000000 --log-level warn >"$WORK/node.log" 2>&1 &
NODE=$!
until "$BIN" health --http "$HTTP" >/dev/null 2>&1; do sleep 0.2; done
bench() {
	"$BIN" bench --target "http://$HTTP" --mix patch=1,send=1 --rate "$RATE" --connections 16 \
		--users 200 --duration "${SECS}s" --quiet --json
}
p99() { # write latency from bench's JSON
	python3 -c 'import json,sys; r=json.load(sys.stdin); t=r["total"]; print("writes p50 %.1f ms, p99 %.1f ms, max %.1f ms, %.0f/s, %d errors" % (t["p50_ms"], t["p99_ms"], t["max_ms"], t["throughput"], t["errors"]))'
}
bench >/dev/null # setup: the bench users, and a warm-up
# with_backups DEST: a bench round while backups run back to back into DEST ("-": the
# CLI streams to /dev/null, so the node's cost alone; a file: written and synced on the
# same disk as the node's data, as a backup kept on the node's host would be).
with_backups() {
	bench >"$WORK/with.json" &
	BENCH=$!
	while kill -0 $BENCH 2>/dev/null; do
		if [ "$1" = - ]; then
			"$BIN" backup --http "$HTTP" --out - --cluster-key-file "$WORK/key" 2>&1 >/dev/null
		else
			"$BIN" backup --http "$HTTP" --out "$1" --force --cluster-key-file "$WORK/key"
		fi | sed 's/^/    /; s/ → .*//' >&2
	done
	wait $BENCH
	p99 <"$WORK/with.json"
}
for i in $(seq "$ROUNDS"); do
	echo "round $i, no backup:            $(bench | p99) (load $(cut -d' ' -f1 /proc/loadavg))"
	echo "round $i, backups to /dev/null: $(with_backups -) (load $(cut -d' ' -f1 /proc/loadavg))"
	echo "round $i, backups to a file:    $(with_backups "$WORK/b.sdbackup") (load $(cut -d' ' -f1 /proc/loadavg))"
done
