package loadgen

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// WriteTable writes the human-readable report: throughput and latency per operation,
// errors by kind, how many responses were behind, and the tool's own CPU use.
func (r *Result) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "targets %s · %d connections · mix %s · %d users · %.1fs",
		strings.Join(r.Targets, ","), r.Connections, r.Mix, r.Users, r.Elapsed)
	if r.Rate > 0 {
		fmt.Fprintf(w, " · paced to %.0f req/s", r.Rate)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "operation\trequests\terrors\treq/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\t")
	row := func(name string, s OpStats) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t\n",
			name, s.Requests, s.Errors, s.Throughput, s.P50, s.P90, s.P99, s.Max)
	}
	for op := range numOps {
		if s, ok := r.Operations[op.String()]; ok {
			row(op.String(), s)
		}
	}
	row("total", r.Total)
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if len(r.Errors) == 0 {
		fmt.Fprintln(w, "errors: none")
	} else {
		fmt.Fprintln(w, "errors:")
		kinds := make([]string, 0, len(r.Errors))
		for k := range r.Errors {
			kinds = append(kinds, k)
		}
		slices.Sort(kinds)
		for _, k := range kinds {
			fmt.Fprintf(w, "  %8d  %s\n", r.Errors[k], k)
		}
	}
	if r.Behind == 0 {
		fmt.Fprintln(w, "behind: none")
	} else {
		pct := 0.0
		if r.Total.Requests > 0 {
			pct = 100 * float64(r.Behind) / float64(r.Total.Requests)
		}
		fmt.Fprintf(w, "behind: %d responses (%.2f%%) were 503 behind: a node could not catch up with the user's bookmark in time\n",
			r.Behind, pct)
	}
	verdict := ""
	if r.CPU.Cores > 0 && r.CPU.Percent > 0.8*100*float64(r.CPU.Cores) {
		verdict = " — near all cores: the load generator may be the bottleneck"
	}
	_, err := fmt.Fprintf(w, "load generator CPU: %.0f%% of one core (user %.1fs + sys %.1fs over %.1fs; %d cores)%s\n",
		r.CPU.Percent, r.CPU.User, r.CPU.Sys, r.Elapsed, r.CPU.Cores, verdict)
	return err
}
