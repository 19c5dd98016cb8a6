package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Report is a run's result, written as report.json and report.md.
type Report struct {
	Mode          string            `json:"mode"`
	RunID         string            `json:"run_id"`
	Seed          uint64            `json:"seed"`
	Started       time.Time         `json:"started"`
	Elapsed       time.Duration     `json:"elapsed_ns"`
	Compose       string            `json:"compose"`
	Config        Config            `json:"-"`
	StartupTime   time.Duration     `json:"startup_ns"`
	Ops           map[string]int    `json:"ops"` // by kind/outcome
	Checks        []Check           `json:"checks"`
	Scenarios     []*ScenarioResult `json:"scenarios"`
	Visible       Latency           `json:"visible"`        // ack → on every node, every write but skewed ones
	VisibleSteady Latency           `json:"visible_steady"` // … acknowledged while no fault held
	VisibleFault  Latency           `json:"visible_fault"`  // … acknowledged during a fault or its recovery
	VisibleSkewed Latency           `json:"visible_skewed"` // … served by a node whose clock ran ahead
	Heal          Latency           `json:"heal"`           // heal → converged, over scenarios
	FinalConverge time.Duration     `json:"final_converge_ns"`
	FinalPending  int               `json:"final_pending"`
	Verdict       *Verdict          `json:"verdict"`
	// ConsistencyBy: the clients' bookmark figures by scenario (with its recovery), and
	// outside every scenario under noFault; the total is in Verdict.Consistency.
	ConsistencyBy map[string]*ConsistencyCount `json:"consistency_by_scenario"`
	FirstPass     *Verdict                     `json:"first_pass,omitempty"`
	Violations    []string                     `json:"violations"` // scenario and check violations
	Metrics       map[string]string            `json:"metrics,omitempty"`
	Abuse         *AbuseReport                 `json:"abuse,omitempty"`
	Error         string                       `json:"error,omitempty"`
	// Replicas is the placement the nodes ran with (0: every node holds everything);
	// Placement each node's share, stored keys and forwarding at the end; Forwarded the
	// workload's requests that a node relayed to a holder, over the whole run.
	Replicas  int             `json:"replicas"`
	Placement []NodePlacement `json:"placement,omitempty"`
	Forwarded int             `json:"forwarded"`
	history   []*Op
}

// fill computes the figures from the history and gathers every violation.
func (rep *Report) fill(r *Runner) {
	rep.history = r.history.Ops()
	rep.Ops = map[string]int{}
	var all, steady, fault, skewed []time.Duration
	for _, op := range rep.history {
		rep.Ops[string(op.Kind)+"/"+string(op.Outcome)]++
		if op.ForwardedBy != "" {
			rep.Forwarded++
		}
		if op.Outcome != OK || op.Visible <= 0 {
			continue
		}
		switch {
		case op.Skewed:
			skewed = append(skewed, op.Visible)
		case op.Scenario == "steady" || op.Scenario == "setup":
			steady = append(steady, op.Visible)
			all = append(all, op.Visible)
		default:
			fault = append(fault, op.Visible)
			all = append(all, op.Visible)
		}
	}
	rep.Visible, rep.VisibleSteady, rep.VisibleFault, rep.VisibleSkewed = latencyOf(all), latencyOf(steady), latencyOf(fault), latencyOf(skewed)
	var heals []time.Duration
	for _, s := range rep.Scenarios {
		heals = append(heals, s.Converge)
		for _, v := range s.Violations {
			rep.Violations = append(rep.Violations, s.Name+": "+v)
		}
	}
	rep.Heal = latencyOf(heals)
	for _, s := range rep.Scenarios {
		if c := rep.ConsistencyBy[s.Name]; c != nil {
			s.Consistency = *c
		}
	}
	for _, c := range rep.Checks {
		if !c.OK {
			rep.Violations = append(rep.Violations, "check failed: "+c.Name+": "+c.Detail)
		}
	}
	if rep.FinalPending > 0 {
		rep.Violations = append(rep.Violations, fmt.Sprintf("%d acknowledged writes not on every node %s after the final heal", rep.FinalPending, fmtDur(rep.FinalConverge)))
	}
	rep.Metrics = map[string]string{}
	for _, n := range r.d.Nodes {
		var parts []string
		for _, m := range []string{"sessiond_rejected_timestamps_total", "sessiond_stored_users", "sessiond_stored_sessions", "sessiond_stored_messages"} {
			if v, ok := r.metricNow(n, m); ok {
				parts = append(parts, fmt.Sprintf("%s=%.0f", strings.TrimPrefix(m, "sessiond_"), v))
			}
		}
		rep.Metrics[n.Name] = strings.Join(parts, " ")
	}
}

// Passed reports whether the run found nothing wrong.
func (rep *Report) Passed() bool {
	return rep.Verdict != nil && rep.Verdict.Failed() == 0 && len(rep.Verdict.Violations) == 0 && len(rep.Violations) == 0 && rep.Error == ""
}

// Summary is the one line a run prints.
func (rep *Report) Summary(dir string) string {
	v := rep.Verdict
	if v == nil {
		v = &Verdict{}
	}
	result := "PASS"
	if !rep.Passed() {
		result = "FAIL"
	}
	c := v.Consistency
	abuse := ""
	if a := rep.Abuse; a != nil {
		abuse = fmt.Sprintf(" honest_logins_refused=%d clock_ahead_max=%s streams_max_accepted=%d", len(a.HonestRefused), fmtDur(a.ClockAheadMax), a.StreamMaxAccepted)
	}
	return fmt.Sprintf("chaos %s %s: scenarios=%d acked=%d lost=%d resurrected=%d duplicated=%d convergence_p99=%s spurious_401=%d ryw_violations=%d behind=%d ryw_checked=%d divergent=%d reordered=%d other_violations=%d visible_p50=%s visible_max=%s heal_max=%s%s replicas=%d forwarded=%d elapsed=%s report=%s",
		rep.Mode, result, len(rep.Scenarios), v.Acked, v.Lost, v.Resurrected, v.Duplicated, fmtDur(rep.Visible.P99),
		c.Spurious401, c.RYW, c.Behind, c.Checked,
		v.Divergent, v.Reordered, len(rep.Violations)+v.Phantom+v.CursorSkips+v.Unanswered, fmtDur(rep.Visible.P50), fmtDur(rep.Visible.Max),
		fmtDur(rep.Heal.Max), abuse, rep.Replicas, rep.Forwarded, rep.Elapsed.Round(time.Second), filepath.Join(dir, "report.md"))
}

// Write writes report.json, report.md and history.jsonl into dir.
func (rep *Report) Write(dir string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), b, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(rep.Markdown()), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "history.jsonl"))
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	for _, op := range rep.history {
		if err := enc.Encode(op); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Markdown renders the report for people.
func (rep *Report) Markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	v := rep.Verdict
	if v == nil {
		v = &Verdict{}
	}
	result := "PASS"
	if !rep.Passed() {
		result = "FAIL"
	}
	p("# sessiond chaos run: %s, %s", rep.Mode, result)
	p("")
	p("Started %s, took %s; seed %d, run id %s; %s; six nodes ready %s after `up`.",
		rep.Started.Format(time.RFC3339), rep.Elapsed.Round(time.Second), rep.Seed, rep.RunID, rep.Compose, fmtDur(rep.StartupTime))
	if rep.Error != "" {
		p("")
		p("**The run stopped early:** %s", rep.Error)
	}
	p("")
	p("## Verdict (after the final heal, every node read directly)")
	p("")
	p("| acknowledged ops | writes checked | lost | resurrected | duplicated | divergent | reordered | phantom | cursor skips | unanswered |")
	p("|---|---|---|---|---|---|---|---|---|---|")
	p("| %d | %d | %d | %d | %d | %d | %d | %d | %d | %d |", v.Acked, v.Checked, v.Lost, v.Resurrected, v.Duplicated, v.Divergent, v.Reordered, v.Phantom, v.CursorSkips, v.Unanswered)
	p("")
	if rep.FirstPass != nil {
		p("The first read found %d violations; the report shows the second read, 15 s later.", rep.FirstPass.Failed())
		p("")
	}
	p("## Bookmarks: the clients' own view (while the run went on)")
	p("")
	p("Every user keeps the latest `X-Sessiond-Bookmark` and sends it back; the fourth user of each worker goes only")
	p("through the round-robin entry point, the others partly. Checked: responses to the user's reads and writes against its own acknowledged writes")
	p("(session data, profile, its messages; an ended session's token, with the bookmark of its end, must get 401);")
	p("spurious 401: a live session's token (or an acknowledged account's login) refused. Both must be 0;")
	p("`503 behind` is allowed. Fresh: new tokens used at once without the client's bookmark.")
	p("")
	p("| scenario (with its recovery) | checked | fresh tokens | spurious 401 | read-your-writes violations | behind (503) | 401, token from a clock ahead |")
	p("|---|---|---|---|---|---|---|")
	row := func(name string, c ConsistencyCount) {
		p("| %s | %d | %d | %d | %d | %d | %d |", name, c.Checked, c.Fresh, c.Spurious401, c.RYW, c.Behind, c.TokenAhead401)
	}
	if c := rep.ConsistencyBy[noFault]; c != nil {
		row(noFault, *c)
	}
	for _, s := range rep.Scenarios {
		row(s.Name, s.Consistency)
	}
	row("**total**", v.Consistency)
	p("")
	p("## Acknowledgement → visible on every node")
	p("")
	p("Measured by reading every node directly after each acknowledgement (about 50 ms resolution).")
	p("")
	p("| writes | p50 | p99 | max | n |")
	p("|---|---|---|---|---|")
	for _, row := range []struct {
		name string
		l    Latency
	}{{"all (skewed-clock writes aside)", rep.Visible}, {"acknowledged with no fault", rep.VisibleSteady},
		{"acknowledged during a fault", rep.VisibleFault}, {"served by the node with its clock ahead", rep.VisibleSkewed}} {
		p("| %s | %s | %s | %s | %d |", row.name, fmtDur(row.l.P50), fmtDur(row.l.P99), fmtDur(row.l.Max), row.l.N)
	}
	p("")
	p("After the final heal every write was on every node within %s (%d still pending).", fmtDur(rep.FinalConverge), rep.FinalPending)
	p("")
	p("## Scenarios")
	p("")
	p("| scenario | fault | heal → converged | during the fault | LB ok/fail/info | LB round robin ok/fail/info | direct ok/fail/info | forwarded | violations |")
	p("|---|---|---|---|---|---|---|---|---|")
	for _, s := range rep.Scenarios {
		conv := fmtDur(s.Converge)
		if !s.Converged {
			conv = fmt.Sprintf("not within %s (%d pending)", fmtDur(s.Converge), s.Unconverged)
		}
		during := joinNonEmpty(s.Divergence, s.Failover)
		p("| %s | %s | %s | %s | %d/%d/%d | %d/%d/%d | %d/%d/%d | %d | %d |", s.Name, s.Fault, conv, mdEscape(during),
			s.LB.OK, s.LB.Fail, s.LB.Info, s.LBRR.OK, s.LBRR.Fail, s.LBRR.Info, s.Direct.OK, s.Direct.Fail, s.Direct.Info, s.Forwarded, len(s.Violations))
	}
	p("")
	for _, s := range rep.Scenarios {
		if len(s.Notes) > 0 {
			p("- %s: %s", s.Name, mdEscape(strings.Join(s.Notes, "; ")))
		}
	}
	p("")
	p("Heal → converged over the scenarios: %s.", rep.Heal)
	p("")
	p("## Checks")
	p("")
	for _, c := range rep.Checks {
		mark := "ok"
		if !c.OK {
			mark = "FAILED"
		}
		p("- %s: **%s** — %s", c.Name, mark, mdEscape(c.Detail))
	}
	p("")
	if a := rep.Abuse; a != nil {
		p("## Abuse (beside the workload, during every fault)")
		p("")
		p("Abusive accounts %v; password guesses against %v.", a.Abusers, a.Victims)
		p("")
		p("| attack | responses by status |")
		p("|---|---|")
		p("| null-delete floods (%d never-set keys each, %d named in acknowledged ones) | %s |", rep.Config.Abuse.NullKeys, a.NullKeysDeleted, statusCounts(a.NullFloods))
		p("| messages with a forged `after` %s ahead | %s |", rep.Config.Abuse.ForgedAhead, statusCounts(a.ForgedSends))
		p("| wrong-password logins via the LB, %d addresses | %s |", a.GuessAddresses, statusCounts(a.Guesses))
		p("| streams, %d at once on one node | %s (at most %d accepted at once) |", rep.Config.Abuse.Streams, statusCounts(a.StreamOpens), a.StreamMaxAccepted)
		p("")
		p("Clock probes: %d fresh messages, at most %s ahead of real time; %d skipped (a node's clock ahead, or no answer).",
			a.ClockProbes, fmtDur(a.ClockAheadMax), a.ClockSkipped)
		p("Honest logins: %d, refused with 429 or a 401 for the right password: %d.", a.HonestLogins, len(a.HonestRefused))
		p("")
	}
	p("## Operations")
	p("")
	p("| op | ok | fail | info |")
	p("|---|---|---|---|")
	for _, k := range []OpKind{OpRegister, OpLogin, OpSet, OpDel, OpProfile, OpSend, OpLogout, OpRevoke, OpErase,
		OpRead, OpReadProfile, OpReadMessages, OpReadEnded, OpReadFresh} {
		p("| %s | %d | %d | %d |", k, rep.Ops[string(k)+"/ok"], rep.Ops[string(k)+"/fail"], rep.Ops[string(k)+"/info"])
	}
	p("")
	p("fail: refused (4xx, or 503 behind: refused before anything ran) or never sent; info: unknown outcome (timeout, other 5xx) — allowed to appear or not.")
	p("")
	p("## Node metrics at the end")
	p("")
	for _, n := range sortedKeys(rep.Metrics) {
		p("- %s: %s", n, rep.Metrics[n])
	}
	p("")
	p("## Placement at the end")
	p("")
	if rep.Replicas > 0 {
		p("`--replicas %d`: each key is held by %d node(s) of each region; a node forwards a request for data it does not hold to a holder.", rep.Replicas, rep.Replicas)
	} else {
		p("No placement (`--replicas 0`): every node holds everything.")
	}
	p("The workload's requests relayed to a holder over the whole run: %d. The final read: %d reads through the six nodes, %d relayed to a holder.",
		rep.Forwarded, v.Reads, v.Forwarded)
	p("")
	p("| node | stored keys | partitions held (ideal) | keys stored without holding them | keys handed off and dropped | requests forwarded / served for want of a holder (since its last start) | final reads it answered |")
	p("|---|---|---|---|---|---|---|")
	for _, np := range rep.Placement {
		held := fmt.Sprintf("%d/%d (%.1f)", np.Holds, np.Partitions, np.Ideal)
		if np.Everything {
			held = "all"
		}
		if np.Err != "" {
			held = "? " + mdEscape(np.Err)
		}
		p("| %s | %.0f | %s | %d | %d | %.0f / %.0f | %d |", np.Node, np.StoredKeys, held, np.MovingKeys, np.Dropped, np.Forwarded, np.NoHolder, v.ServedBy[np.Node])
	}
	all := append(append([]string{}, rep.Violations...), v.Violations...)
	p("")
	p("## Violations (%d)", len(all))
	p("")
	for _, x := range all {
		p("- %s", mdEscape(x))
	}
	return b.String()
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", "\\|") }

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

// statusCounts renders responses counted by status, e.g. "200×5 429×3" (0: no response).
func statusCounts(m map[int]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%d×%d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}
