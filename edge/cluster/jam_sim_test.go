package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/edge/cluster/clustersim"
	"github.com/sessiond/sessiond/storage"
)

// Replication that cannot jam: messages bounded in bytes however many keys differ, a
// failing anti-entropy round that does not stop pushes, and a change a peer cannot take
// that does not hold back the others.

// TestSimAntiEntropyAtScale: two replicas that differ in tens of thousands of keys, with
// a message bound so low that one request for every differing leaf, or one reply with
// their changes, would be far over it (the jam that kept a large node from ever becoming
// ready), converge in bounded messages.
func TestSimAntiEntropyAtScale(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 30,000 log entries")
	}
	t.Parallel()
	const maxMessage = 40 << 10
	c := newTestCluster(t, 2, []string{"eu"}, clustersim.WithMaxMessage(maxMessage), clustersim.WithAntiEntropy(200*time.Millisecond))
	for _, n := range c.Nodes {
		<-n.Rep().CaughtUp()
	}
	c.Cut([]int{0})
	db := c.Nodes[0].DB()
	ctx := context.Background()
	for batch := range 10 {
		mustOK(t, "append", db.Update(ctx, func(tx *storage.Tx) error {
			for i := range 3000 {
				a, b := fmt.Sprintf("a%03d", (batch*3000+i)%300), "b"
				if _, err := tx.Append(crdt.ConversationID(a, b), crdt.Message{From: a, To: b, Body: "x"}); err != nil {
					return err
				}
			}
			return nil
		}))
	}
	c.Net.ResetStats()
	c.Heal()
	c.WaitSameRoot(t, 0, 1, 2*time.Minute)
	for _, l := range [][2]string{{"n0", "n1"}, {"n1", "n0"}} {
		st := c.Net.LinkStats(l[0], l[1])
		t.Logf("%s→%s: %v calls, %d bytes", l[0], l[1], st.Calls, st.Bytes)
	}
}

// TestSimPushesOutliveFailingAntiEntropy: a peer that fails every anti-entropy round (here
// its digest requests are refused) still receives pushes of new writes.
func TestSimPushesOutliveFailingAntiEntropy(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 2, []string{"eu"}, clustersim.WithAntiEntropy(100*time.Millisecond))
	for _, n := range c.Nodes {
		<-n.Rep().CaughtUp()
	}
	c.Net.ResetStats()
	c.Net.SetRefuse(func(kind string, _ []byte) error {
		if kind == "digest" {
			return errors.New("refused")
		}
		return nil
	})
	// The periodic rounds have started failing: before the fix, a worker whose round
	// failed retried the round and pushed nothing.
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		n := c.Net.LinkStats("n0", "n1").Calls["digest"]
		return n >= 3, fmt.Sprintf("%d digest calls n0→n1", n)
	})
	key := crdt.UserKey("pushed")
	merge(t, c.Nodes[0].DB(), key, crdt.NewUser("pushed", "", nil, c.Nodes[0].DB().Clock().Next()))
	clustersim.WaitFor(t, 10*time.Second, func() (bool, string) {
		_, ok, _ := c.Nodes[1].DB().Record(context.Background(), key)
		return ok, "n1 has not received the write"
	})
}

// TestSimPoisonChange: a change that the peer refuses every time it is pushed does not
// hold back later writes: the worker gives the stretch up to anti-entropy, which pushes
// the rest around it.
func TestSimPoisonChange(t *testing.T) {
	t.Parallel()
	c := newTestCluster(t, 2, []string{"eu"}, clustersim.WithAntiEntropy(time.Hour))
	for _, n := range c.Nodes {
		<-n.Rep().CaughtUp()
	}
	poison := crdt.UserKey("poison")
	c.Net.SetRefuse(func(kind string, req []byte) error {
		if kind != "push" {
			return nil
		}
		var p cluster.PushRequest
		if err := p.UnmarshalBinary(req); err != nil {
			return err
		}
		for _, ch := range p.Changes {
			if ch.Key == poison {
				return errors.New("cannot take it")
			}
		}
		return nil
	})
	db := c.Nodes[0].DB()
	merge(t, db, poison, crdt.NewUser("poison", "", nil, db.Clock().Next()))
	good := crdt.UserKey("good")
	merge(t, db, good, crdt.NewUser("good", "", nil, db.Clock().Next()))
	clustersim.WaitFor(t, 30*time.Second, func() (bool, string) {
		_, ok, _ := c.Nodes[1].DB().Record(context.Background(), good)
		return ok, "n1 has not received the write behind the poison"
	})
	later := crdt.UserKey("later")
	merge(t, db, later, crdt.NewUser("later", "", nil, db.Clock().Next()))
	clustersim.WaitFor(t, 30*time.Second, func() (bool, string) {
		_, ok, _ := c.Nodes[1].DB().Record(context.Background(), later)
		return ok, "n1 has not received a write made after the poison was given up"
	})
	if _, ok, _ := c.Nodes[1].DB().Record(context.Background(), poison); ok {
		t.Error("the refused change arrived: the test's refusal did not hold")
	}
}

// merge writes m into key on db.
func merge(t *testing.T, db *storage.DB, key string, m crdt.Map) {
	t.Helper()
	mustOK(t, "merge "+key, db.Update(context.Background(), func(tx *storage.Tx) error {
		_, err := tx.Merge(key, m)
		return err
	}))
}
