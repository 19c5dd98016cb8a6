// Package api holds the request and response types of sessiond's HTTP API (docs/API.md),
// its error codes and its header names: the one description of the JSON on the wire,
// shared by the node (package functions aliases these types, and edge encodes them) and
// by the Go client (package client), so the two cannot drift apart.
//
// It uses the standard library only and must import nothing of this module: an
// application that talks to sessiond pulls in neither storage, nor the password hashing,
// nor the HTTP server.
package api
