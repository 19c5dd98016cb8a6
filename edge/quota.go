package edge

import (
	"context"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// usageMeter estimates an app's usage across the cluster (functions.UsageMeter) from what
// this node stores (storage.DB.AppUsage). Without placement every node holds every
// record, so that is the answer. With it, a node holds its share of the partitions, over
// which an app's keys, subjects and sessions spread by hash, so its count is scaled up
// by the partitions over its share; the keys it keeps for others for a while (hinted
// handoff) make the estimate err high, never low.
type usageMeter struct{ n *Node }

var _ functions.UsageMeter = usageMeter{}

// AppUsage implements functions.UsageMeter.
func (m usageMeter) AppUsage(app string) functions.Usage {
	u := m.n.db.AppUsage(app)
	out := functions.Usage{Records: u.Records, Bytes: u.Bytes}
	if m.n.cfg.Replicas == 0 || !m.n.replicator.Sharded() {
		return out
	}
	share, _, ok := m.n.replicator.Share(m.n.db.NodeID(), m.n.cfg.Region)
	if !ok || share <= 0 || share >= crdt.Partitions {
		return out
	}
	out.Records = out.Records * crdt.Partitions / int64(share)
	out.Bytes = out.Bytes * crdt.Partitions / int64(share)
	return out
}

// appQuotas reads an app's own quota (functions.AppQuotas) from its record, which every
// node holds (crdt.ClusterPartition) and the record cache keeps decoded.
type appQuotas struct{ db *storage.DB }

var _ functions.AppQuotas = appQuotas{}

// AppQuota implements functions.AppQuotas. A record that cannot be read counts as none:
// the nodes' own quota then applies.
func (q appQuotas) AppQuota(app string) (int64, bool) {
	m, ok, err := q.db.Record(context.Background(), crdt.AppKey(app))
	if err != nil || !ok {
		return 0, false
	}
	return crdt.ReadAppQuota(&m)
}
