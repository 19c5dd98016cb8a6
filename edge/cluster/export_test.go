package cluster

// Exported for the external tests (package cluster_test), which use clustersim and so
// cannot be in package cluster.

// ForgetUnknownAfter is forgetUnknownAfter.
const ForgetUnknownAfter = forgetUnknownAfter

// The serf tags a member announces.
const (
	TagRegion   = tagRegion
	TagID       = tagID
	TagSync     = tagSync
	TagProto    = tagProto
	TagProtoMin = tagProtoMin
	TagReplicas = tagReplicas
	TagTokens   = tagTokens
)

// SetSerfTags replaces the serf tags m announces, as a member of another version or
// configuration would announce its own.
func SetSerfTags(m *Membership, tags map[string]string) error { return m.serf.SetTags(tags) }

// How long a leaving member broadcasts its leave, and then waits for it to spread.
const (
	LeaveBroadcastTimeout = leaveBroadcastTimeout
	LeavePropagateDelay   = leavePropagateDelay
)

// FakeNextVersion makes the codecs also read and write ProtocolVersion+1, a fake next
// version that differs on the wire only in its version byte (see fakeNext), until the
// test ends. Tests that use it must not run in parallel with others that depend on
// Supported (none does: Supported's Max is only read by configs that ask for it).
func FakeNextVersion(t interface{ Cleanup(func()) }) {
	fakeNext.Store(true)
	t.Cleanup(func() { fakeNext.Store(false) })
}
