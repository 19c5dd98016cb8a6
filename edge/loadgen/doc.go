// Package loadgen drives a sessiond cluster (or anything that speaks its API) with a
// workload mix and measures it: throughput, latency percentiles per operation, errors by
// kind, and the load generator's own CPU use, so a reader can tell whether the tool was
// the bottleneck. It backs the `sessiond bench` subcommand. Each bench user is one client
// of the API: its requests carry its latest X-Sessiond-Bookmark, so no step waits for or
// retries around replication, and a node that cannot catch up in time (503 behind) is
// counted, not retried.
//
// It also writes benchmark data sets straight into a node's data file through storage's
// API (Seed), for figures that would take hours to build through the HTTP API, whose
// every registration and login costs an argon2id hash.
//
// Setup (registering and logging in the users) goes through the Go client, package
// client. The measured requests go through Fiber's (fasthttp's) client instead, whose
// cost per request is a fraction of net/http's: the tool shares the machine's cores with
// what it measures, and a heavier client would lower the figures of the light operations.
//
// It imports storage, crdt and functions (for Seed: records and the password hash), api
// and client, and Fiber's HTTP client; it must not import edge, so that the node's code
// never depends on its load generator.
package loadgen
