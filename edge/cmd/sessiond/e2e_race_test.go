//go:build race

package main_test

// raceEnabled: the tests run with -race, so the e2e binary is built with it too.
const raceEnabled = true
