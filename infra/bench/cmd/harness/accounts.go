package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// login is a session of a user the harness made: its token and the bookmark of its login.
type login struct {
	token, bookmark string
}

func password(username string) string { return username + "-password" }

// register creates username through base (an existing one is reused) and returns the
// bookmark of its creation ("" if it existed).
func register(hc *http.Client, base, username string) (string, error) {
	st, b, bm, err := request(hc, "POST", base+"/v1/users", "", "", map[string]any{"username": username,
		"password": password(username), "profile": map[string]string{"first_name": "Bench"}})
	if err != nil || (st != 201 && st != 409) {
		return "", fmt.Errorf("register %s: %d %s %v", username, st, b, err)
	}
	return bm, nil
}

// logIn logs username in through base, sending bookmark (the registration's, when it was
// made through another node) so that base answers once it holds the user.
func logIn(hc *http.Client, base, username, bookmark string) (login, error) {
	st, b, bm, err := request(hc, "POST", base+"/v1/sessions", "", bookmark,
		map[string]string{"username": username, "password": password(username)})
	if err != nil || st != 201 {
		return login{}, fmt.Errorf("log %s in: %d %s %v", username, st, b, err)
	}
	var lr struct{ Token string }
	if err := json.Unmarshal(b, &lr); err != nil || lr.Token == "" {
		return login{}, fmt.Errorf("log %s in: no token in %s", username, b)
	}
	return login{token: lr.Token, bookmark: bm}, nil
}

// durationStats are percentiles of samples, in milliseconds.
type durationStats struct {
	N   int     `json:"samples"`
	P50 float64 `json:"p50_ms"`
	P90 float64 `json:"p90_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// statsOf sorts samples and returns their percentiles (nearest rank).
func statsOf(samples []time.Duration) durationStats {
	if len(samples) == 0 {
		return durationStats{}
	}
	slices.Sort(samples)
	q := func(f float64) float64 {
		return float64(samples[min(int(f*float64(len(samples))), len(samples)-1)]) / 1e6
	}
	return durationStats{N: len(samples), P50: q(.5), P90: q(.9), P99: q(.99), Max: float64(samples[len(samples)-1]) / 1e6}
}
