//go:build !race

package main_test

// raceEnabled: the tests run without -race, and so does the e2e binary.
const raceEnabled = false
