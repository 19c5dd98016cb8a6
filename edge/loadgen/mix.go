package loadgen

import (
	"fmt"
	"strconv"
	"strings"
)

// Op is one kind of request of the workload.
type Op int

// The operations, each one API call.
const (
	OpLogin        Op = iota // POST /v1/sessions: argon2id check and a new session (a durable write)
	OpRead                   // GET /v1/sessions/current
	OpPatch                  // PATCH /v1/sessions/current: one data key (a durable write)
	OpSend                   // POST /v1/messages to another bench user (a durable write)
	OpConversation           // GET /v1/messages?with=…&limit=20
	numOps
)

var opNames = [numOps]string{"login", "read", "patch", "send", "conversation"}

// String returns the operation's name as --mix spells it.
func (o Op) String() string {
	if o < 0 || o >= numOps {
		return "op(" + strconv.Itoa(int(o)) + ")"
	}
	return opNames[o]
}

// Mix is a workload: a weight per operation. Weights are relative; zero leaves the
// operation out.
type Mix [numOps]int

// DefaultMix is the mix `sessiond bench` runs when given none.
const DefaultMix = "login=1,read=10,patch=5,send=2,conversation=2"

// ParseMix parses "read=10,patch=5": operation names with non-negative integer weights.
func ParseMix(s string) (Mix, error) {
	var m Mix
	total := 0
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, ok := strings.Cut(part, "=")
		if !ok {
			w = "1"
		}
		op := Op(-1)
		for i, n := range opNames {
			if n == strings.TrimSpace(name) {
				op = Op(i)
			}
		}
		if op < 0 {
			return m, fmt.Errorf("mix: unknown operation %q (want %s)", name, strings.Join(opNames[:], ", "))
		}
		v, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || v < 0 || v > 1000 {
			return m, fmt.Errorf("mix: weight of %s %q: want an integer 0–1000", name, w)
		}
		m[op] += v
		total += v
	}
	if total == 0 {
		return m, fmt.Errorf("mix %q: no operation with a positive weight", s)
	}
	return m, nil
}

// String returns the mix in ParseMix's form.
func (m Mix) String() string {
	var parts []string
	for op, w := range m {
		if w > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", Op(op), w))
		}
	}
	return strings.Join(parts, ",")
}

// schedule returns one cycle of operations in which each appears as often as its weight,
// spread out (smooth weighted round robin), so that every stretch of requests has the
// mix's proportions and no operation comes in bursts.
func (m Mix) schedule() []Op {
	total := 0
	for _, w := range m {
		total += w
	}
	cur := make([]int, numOps)
	out := make([]Op, 0, total)
	for range total {
		best := -1
		for op, w := range m {
			if w == 0 {
				continue
			}
			cur[op] += w
			if best < 0 || cur[op] > cur[best] {
				best = op
			}
		}
		cur[best] -= total
		out = append(out, Op(best))
	}
	return out
}
