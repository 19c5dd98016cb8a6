// Package bench is the comparison harness behind `task bench`: the servers sessiond is
// measured against and the program that starts every target and runs `sessiond bench`
// against each (and wrk, for the reads of record, when it is installed). It is a module of its own so that its Redis client never enters
// sessiond's go.mod; it does not import sessiond's packages (it drives the sessiond binary).
package bench
