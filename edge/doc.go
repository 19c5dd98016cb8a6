// Package edge is a sessiond node: configuration, lifecycle, the Fiber HTTP app with its
// JWT middleware and the service API's authentication of apps (service.go), login
// throttling, security headers and metrics, the live message stream, and cluster
// membership and replication. It wires storage to functions and serves ui.
// edge/cmd/sessiond is the binary.
//
// edge imports every other package of the project; nothing imports edge.
package edge
