package main

import (
	"slices"
	"testing"
)

func TestScalingRatios(t *testing.T) {
	runs := []scalingRun{
		{Target: "s", Connections: 8, Round: 0, Throughput: 50},
		{Target: "r", Connections: 8, Round: 0, Throughput: 100},
		{Target: "s", Connections: 32, Round: 0, Throughput: 300},
		{Target: "r", Connections: 32, Round: 0, Throughput: 200},
		{Target: "s", Connections: 8, Round: 1, Throughput: 90},
		{Target: "r", Connections: 8, Round: 1, Throughput: 100},
		{Target: "s", Connections: 32, Round: 1, Throughput: 100}, // no Redis run to pair with
		{Target: "s", Connections: 8, Round: 2, Throughput: 70},
		{Target: "r", Connections: 8, Round: 2, Throughput: 100},
	}
	got := scalingRatios(runs, "s", "r")
	if len(got) != 2 {
		t.Fatalf("got %d concurrencies, want 8 and 32: %+v", len(got), got)
	}
	if c := got[0]; c.Connections != 8 || !slices.Equal(c.Rounds, []float64{0.5, 0.9, 0.7}) || c.Median != 0.7 {
		t.Errorf("8 connections: %+v, want rounds 0.5 0.9 0.7, median 0.7 (pairs of the same round)", c)
	}
	if c := got[1]; c.Connections != 32 || !slices.Equal(c.Rounds, []float64{1.5}) || c.Median != 1.5 {
		t.Errorf("32 connections: %+v, want the one paired round, 1.5", c)
	}
	if r := scalingRatios(runs[:1], "s", "r"); len(r) != 0 {
		t.Errorf("no Redis run: %+v, want no ratio", r)
	}
}
