// Package k8s holds sessiond's Kubernetes manifests (a kustomize base and an overlay per
// region) and their test: every overlay is rendered as `kubectl kustomize` would, each
// object is decoded strictly into its k8s.io/api type (an unknown or duplicated field is
// an error, so a misspelt or misplaced field cannot pass unnoticed), and the invariants
// the deployment relies on are checked. This is a module of its own, so that k8s.io/api
// stays out of the product's go.mod. Run: cd infra/k8s && go test ./...
package k8s

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// region is one rendered overlay, decoded.
type region struct {
	name      string
	namespace *corev1.Namespace
	sts       *appsv1.StatefulSet
	services  []*corev1.Service
	pdb       *policyv1.PodDisruptionBudget
	policy    *networkingv1.NetworkPolicy
}

// decodeStrict decodes JSON into v, failing on unknown and duplicated fields and on
// fields whose case differs from the API's (sigs.k8s.io/json, as the API server does).
func decodeStrict(data []byte, v any) error {
	strict, err := sigsjson.UnmarshalStrict(data, v, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	if len(strict) > 0 {
		return fmt.Errorf("strict decoding: %v", strict)
	}
	return nil
}

// render runs kustomize on dir, on disk, and decodes every object.
func render(t *testing.T, dir string) region {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	r := region{name: filepath.Base(dir)}
	for _, res := range m.Resources() {
		data, err := res.MarshalJSON()
		if err != nil {
			t.Fatalf("%s: %s: %v", dir, res.CurId(), err)
		}
		id := fmt.Sprintf("%s %s/%s", res.GetKind(), res.GetNamespace(), res.GetName())
		var obj any
		switch res.GetApiVersion() + " " + res.GetKind() {
		case "v1 Namespace":
			r.namespace = &corev1.Namespace{}
			obj = r.namespace
		case "apps/v1 StatefulSet":
			r.sts = &appsv1.StatefulSet{}
			obj = r.sts
		case "v1 Service":
			s := &corev1.Service{}
			r.services = append(r.services, s)
			obj = s
		case "policy/v1 PodDisruptionBudget":
			r.pdb = &policyv1.PodDisruptionBudget{}
			obj = r.pdb
		case "networking.k8s.io/v1 NetworkPolicy":
			r.policy = &networkingv1.NetworkPolicy{}
			obj = r.policy
		default:
			t.Fatalf("%s: unexpected object %s (%s): add it to the test", dir, id, res.GetApiVersion())
		}
		if err := decodeStrict(data, obj); err != nil {
			t.Fatalf("%s: %s does not decode strictly into k8s.io/api: %v", dir, id, err)
		}
	}
	switch {
	case r.namespace == nil, r.sts == nil, r.pdb == nil, r.policy == nil, len(r.services) != 2:
		t.Fatalf("%s: want a Namespace, a StatefulSet, two Services, a PodDisruptionBudget and a NetworkPolicy; got %+v", dir, r)
	}
	return r
}

func overlays(t *testing.T) []string {
	t.Helper()
	dirs, err := filepath.Glob("overlays/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no overlays: %v", err)
	}
	return dirs
}

// TestDecodeStrict: the decoder the test relies on refuses what the API server would.
func TestDecodeStrict(t *testing.T) {
	for name, doc := range map[string]string{
		"ErrUnknownField":   `{"apiVersion":"v1","kind":"Service","spec":{"clusterIp":"None"}}`,
		"ErrMisplacedField": `{"apiVersion":"v1","kind":"Service","spec":{"publishNotReadyAddresses":true,"readinessProbe":{}}}`,
		"ErrDuplicateField": `{"apiVersion":"v1","kind":"Service","spec":{"type":"ClusterIP","type":"NodePort"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			if err := decodeStrict([]byte(doc), &corev1.Service{}); err == nil {
				t.Errorf("decodeStrict(%s) = nil, want an error", doc)
			}
		})
	}
}

func env(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func containerPort(t *testing.T, c corev1.Container, p intstr.IntOrString, proto corev1.Protocol) int32 {
	t.Helper()
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal) && cp.Protocol == proto {
			return cp.ContainerPort
		}
	}
	t.Errorf("container %s has no %s port %s", c.Name, proto, p.String())
	return 0
}

// selects reports whether a selector's labels are all among the pod's.
func selects(sel map[string]string, pod map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if pod[k] != v {
			return false
		}
	}
	return true
}

func portOf(t *testing.T, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Errorf("address %q: %v", addr, err)
		return 0
	}
	n, _ := strconv.Atoi(p)
	return int32(n) // #nosec G109 G115 -- a port from our own manifests
}

func TestOverlays(t *testing.T) {
	var regions []region
	for _, dir := range overlays(t) {
		regions = append(regions, render(t, dir))
	}
	// Every region joins every region's gossip Service, by a name that resolves across
	// namespaces.
	var gossipTargets []string
	names := map[string]string{} // StatefulSet name → region: pod (node) names must not collide
	for _, r := range regions {
		for _, s := range r.services {
			if s.Spec.ClusterIP == corev1.ClusterIPNone {
				gossipTargets = append(gossipTargets, fmt.Sprintf("%s.%s.svc.cluster.local:7946", s.Name, s.Namespace))
			}
		}
		if other, ok := names[r.sts.Name]; ok {
			t.Errorf("regions %s and %s both name their StatefulSet %s: their pods, and so their node names, would collide", other, r.name, r.sts.Name)
		}
		names[r.sts.Name] = r.name
	}
	slices.Sort(gossipTargets)

	for _, r := range regions {
		t.Run(r.name, func(t *testing.T) { checkRegion(t, r, gossipTargets) })
	}
}

func checkRegion(t *testing.T, r region, gossipTargets []string) {
	sts := r.sts
	pod := sts.Spec.Template
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("StatefulSet %s has %d containers, want 1", sts.Name, len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	for _, o := range []string{sts.Namespace, r.pdb.Namespace, r.policy.Namespace} {
		if o != r.namespace.Name {
			t.Errorf("an object is in namespace %q, want %q", o, r.namespace.Name)
		}
	}

	t.Run("Selectors", func(t *testing.T) {
		if sts.Spec.Selector == nil || !selects(sts.Spec.Selector.MatchLabels, pod.Labels) {
			t.Errorf("StatefulSet selector %v does not select its pods %v", sts.Spec.Selector, pod.Labels)
		}
		if r.pdb.Spec.Selector == nil || !selects(r.pdb.Spec.Selector.MatchLabels, pod.Labels) {
			t.Errorf("PodDisruptionBudget selector %v does not select the pods %v", r.pdb.Spec.Selector, pod.Labels)
		}
		for _, s := range r.services {
			if !selects(s.Spec.Selector, pod.Labels) {
				t.Errorf("Service %s selector %v does not select the pods %v", s.Name, s.Spec.Selector, pod.Labels)
			}
		}
		if pod.Labels["sessiond.io/region"] != r.name {
			t.Errorf("pods carry region label %q, want %q", pod.Labels["sessiond.io/region"], r.name)
		}
	})

	t.Run("Identity", func(t *testing.T) {
		if v, ok := env(c, "SESSIOND_NODE"); ok {
			t.Errorf("SESSIOND_NODE=%q: leave it unset, so that the node name is the pod's host name, stable per replica", v)
		}
		var data *corev1.PersistentVolumeClaim
		for i := range sts.Spec.VolumeClaimTemplates {
			if sts.Spec.VolumeClaimTemplates[i].Name == "data" {
				data = &sts.Spec.VolumeClaimTemplates[i]
			}
		}
		if data == nil {
			t.Fatal("no volumeClaimTemplate named data")
		}
		if !slices.Contains(data.Spec.AccessModes, corev1.ReadWriteOnce) || data.Spec.Resources.Requests.Storage().IsZero() {
			t.Errorf("data claim: access %v, storage %v; want ReadWriteOnce and a size", data.Spec.AccessModes, data.Spec.Resources.Requests.Storage())
		}
		dir, _ := env(c, "SESSIOND_DATA")
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "data" && m.MountPath == dir && !m.ReadOnly }) {
			t.Errorf("SESSIOND_DATA=%q is not where the data claim is mounted (%v)", dir, c.VolumeMounts)
		}
		if p := sts.Spec.PersistentVolumeClaimRetentionPolicy; p == nil || p.WhenScaled != appsv1.RetainPersistentVolumeClaimRetentionPolicyType || p.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
			t.Errorf("persistentVolumeClaimRetentionPolicy %+v: want Retain both ways (a node's data is its identity)", p)
		}
	})

	var headless, httpSvc *corev1.Service
	for _, s := range r.services {
		if s.Spec.ClusterIP == corev1.ClusterIPNone {
			headless = s
		} else {
			httpSvc = s
		}
	}
	t.Run("Services", func(t *testing.T) {
		if headless == nil || httpSvc == nil {
			t.Fatalf("want a headless Service and an HTTP one, got %v", r.services)
		}
		if sts.Spec.ServiceName != headless.Name {
			t.Errorf("StatefulSet serviceName %q, want the headless Service %q", sts.Spec.ServiceName, headless.Name)
		}
		if !headless.Spec.PublishNotReadyAddresses {
			t.Error("the headless Service must publish pods before they are ready: a node catches up from its peers before it turns ready")
		}
		gossip, _ := env(c, "SESSIOND_GOSSIP")
		syncAddr, _ := env(c, "SESSIOND_SYNC")
		want := map[string]int32{"TCP " + strconv.Itoa(int(portOf(t, gossip))): 0, "UDP " + strconv.Itoa(int(portOf(t, gossip))): 0, "TCP " + strconv.Itoa(int(portOf(t, syncAddr))): 0}
		for _, p := range headless.Spec.Ports {
			target := containerPort(t, c, p.TargetPort, p.Protocol)
			k := string(p.Protocol) + " " + strconv.Itoa(int(target))
			if _, ok := want[k]; !ok {
				t.Errorf("headless Service port %s targets %s, which is neither gossip nor sync", p.Name, k)
			}
			delete(want, k)
		}
		if len(want) > 0 {
			t.Errorf("headless Service lacks %v (gossip TCP and UDP, sync TCP)", want)
		}
		httpAddr, _ := env(c, "SESSIOND_HTTP")
		if len(httpSvc.Spec.Ports) != 1 || containerPort(t, c, httpSvc.Spec.Ports[0].TargetPort, corev1.ProtocolTCP) != portOf(t, httpAddr) {
			t.Errorf("HTTP Service %s ports %v do not reach SESSIOND_HTTP=%s", httpSvc.Name, httpSvc.Spec.Ports, httpAddr)
		}
	})

	t.Run("Membership", func(t *testing.T) {
		if v, _ := env(c, "SESSIOND_REGION"); v != r.name {
			t.Errorf("SESSIOND_REGION=%q, want %q", v, r.name)
		}
		join, _ := env(c, "SESSIOND_JOIN")
		got := strings.Split(join, ",")
		slices.Sort(got)
		if !slices.Equal(got, gossipTargets) {
			t.Errorf("SESSIOND_JOIN=%q, want every region's headless Service: %s", join, strings.Join(gossipTargets, ","))
		}
		if v, _ := env(c, "SESSIOND_ADVERTISE"); v != "$(POD_IP)" {
			t.Errorf("SESSIOND_ADVERTISE=%q, want $(POD_IP)", v)
		}
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
		}) || slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "POD_IP" }) > slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "SESSIOND_ADVERTISE" }) {
			t.Error("POD_IP must come from status.podIP, before SESSIOND_ADVERTISE refers to it")
		}
	})

	t.Run("ClusterKey", func(t *testing.T) {
		file, _ := env(c, "SESSIOND_CLUSTER_KEY_FILE")
		if _, ok := env(c, "SESSIOND_CLUSTER_KEY"); ok {
			t.Error("SESSIOND_CLUSTER_KEY is set in the manifest: the key belongs in a Secret")
		}
		var mount *corev1.VolumeMount
		for i, m := range c.VolumeMounts {
			if strings.HasPrefix(file, m.MountPath+"/") {
				mount = &c.VolumeMounts[i]
			}
		}
		if mount == nil || !mount.ReadOnly {
			t.Fatalf("SESSIOND_CLUSTER_KEY_FILE=%q is on no read-only mount (%v)", file, c.VolumeMounts)
		}
		i := slices.IndexFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == mount.Name })
		if i < 0 || pod.Spec.Volumes[i].Secret == nil || pod.Spec.Volumes[i].Secret.SecretName == "" {
			t.Fatalf("volume %s is not a Secret", mount.Name)
		}
		sec := pod.Spec.Volumes[i].Secret
		rel := strings.TrimPrefix(file, mount.MountPath+"/")
		if !slices.ContainsFunc(sec.Items, func(k corev1.KeyToPath) bool { return k.Path == rel }) {
			t.Errorf("Secret %s projects %v, not %s", sec.SecretName, sec.Items, rel)
		}
		if sec.DefaultMode == nil || *sec.DefaultMode&0o077 != 0 {
			t.Errorf("Secret volume mode %v: want it readable by its owner only", sec.DefaultMode)
		}
	})

	t.Run("Probes", func(t *testing.T) {
		httpAddr, _ := env(c, "SESSIOND_HTTP")
		for _, p := range []struct {
			name  string
			probe *corev1.Probe
			path  string
		}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s probe: want an HTTP GET of %s", p.name, p.path)
				continue
			}
			if p.probe.HTTPGet.Path != p.path || containerPort(t, c, p.probe.HTTPGet.Port, corev1.ProtocolTCP) != portOf(t, httpAddr) {
				t.Errorf("%s probe gets %s on %s, want %s on SESSIOND_HTTP's port", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
			}
		}
		if l := c.LivenessProbe; l != nil && int64(l.PeriodSeconds)*int64(l.FailureThreshold) < 30 {
			t.Errorf("liveness gives up after %d s: a node busy catching up must not be killed for it", l.PeriodSeconds*l.FailureThreshold)
		}
	})

	t.Run("GracefulStop", func(t *testing.T) {
		var preStop int64
		switch h := c.Lifecycle; {
		case h == nil || h.PreStop == nil:
			t.Fatal("no preStop: the pod would get SIGTERM while endpoints still send it requests")
		case h.PreStop.Sleep != nil:
			preStop = h.PreStop.Sleep.Seconds
		}
		// A graceful stop: requests drain and the node leaves the cluster within
		// --shutdown-timeout (10 s by default); leave room on top.
		const shutdown = 10
		if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g < preStop+shutdown+5 {
			t.Errorf("terminationGracePeriodSeconds %v: want at least preStop (%d s) + shutdown (%d s) + 5 s", g, preStop, shutdown)
		}
		if s := sts.Spec.UpdateStrategy; s.Type != appsv1.RollingUpdateStatefulSetStrategyType {
			t.Errorf("update strategy %s, want RollingUpdate", s.Type)
		} else if s.RollingUpdate != nil && s.RollingUpdate.MaxUnavailable != nil && s.RollingUpdate.MaxUnavailable.IntValue() != 1 {
			t.Errorf("rolling update maxUnavailable %v, want one pod at a time", s.RollingUpdate.MaxUnavailable)
		}
		if sts.Spec.MinReadySeconds < 5 {
			t.Errorf("minReadySeconds %d: a rolling update should see a new pod stay ready before it stops the next", sts.Spec.MinReadySeconds)
		}
		if u := r.pdb.Spec.MaxUnavailable; u == nil || u.IntValue() != 1 || r.pdb.Spec.MinAvailable != nil {
			t.Errorf("PodDisruptionBudget maxUnavailable %v minAvailable %v, want maxUnavailable 1", u, r.pdb.Spec.MinAvailable)
		}
		if n := sts.Spec.Replicas; n == nil || *n < 2 {
			t.Errorf("replicas %v: with one, every disruption takes the region down", n)
		}
	})

	t.Run("Resources", func(t *testing.T) {
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, lim := c.Resources.Requests[res], c.Resources.Limits[res]
			if req.IsZero() || lim.IsZero() || lim.Cmp(req) < 0 {
				t.Errorf("%s: request %s, limit %s; want both, limit ≥ request", res, req.String(), lim.String())
			}
		}
	})

	t.Run("Security", func(t *testing.T) {
		ps := pod.Spec.SecurityContext
		if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser == 0 {
			t.Errorf("pod securityContext %+v: want runAsNonRoot and a non-zero runAsUser", ps)
		}
		if ps != nil && (ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault) {
			t.Errorf("seccomp profile %v, want RuntimeDefault", ps.SeccompProfile)
		}
		cs := c.SecurityContext
		if cs == nil || cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem {
			t.Error("container root filesystem is not read-only")
		}
		if cs == nil || cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation {
			t.Error("container may escalate privileges")
		}
		if cs == nil || cs.Capabilities == nil || !slices.Contains(cs.Capabilities.Drop, "ALL") {
			t.Error("container keeps its capabilities; want drop ALL")
		}
		if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
			t.Error("the pod mounts a service account token it has no use for")
		}
	})

	t.Run("TopologySpread", func(t *testing.T) {
		i := slices.IndexFunc(pod.Spec.TopologySpreadConstraints, func(c corev1.TopologySpreadConstraint) bool {
			return c.TopologyKey == "topology.kubernetes.io/zone"
		})
		if i < 0 {
			t.Fatal("no topology spread across zones")
		}
		c := pod.Spec.TopologySpreadConstraints[i]
		if c.MaxSkew != 1 || c.LabelSelector == nil || !selects(c.LabelSelector.MatchLabels, pod.Labels) {
			t.Errorf("zone spread %+v: want maxSkew 1 over this region's pods", c)
		}
	})

	t.Run("NetworkPolicy", func(t *testing.T) {
		np := r.policy.Spec
		if !selects(np.PodSelector.MatchLabels, pod.Labels) || !slices.Contains(np.PolicyTypes, networkingv1.PolicyTypeIngress) {
			t.Fatalf("NetworkPolicy selects %v with types %v: want the sessiond pods, Ingress", np.PodSelector.MatchLabels, np.PolicyTypes)
		}
		httpAddr, _ := env(c, "SESSIOND_HTTP")
		httpPort := portOf(t, httpAddr)
		internal := map[string]bool{} // "PROTO PORT" of gossip and sync, admitted from sessiond pods
		for i, rule := range np.Ingress {
			var ports []string
			for _, p := range rule.Ports {
				proto := corev1.ProtocolTCP
				if p.Protocol != nil {
					proto = *p.Protocol
				}
				if p.Port == nil || p.EndPort != nil {
					t.Errorf("rule %d admits a range of ports (%v)", i, p)
					continue
				}
				ports = append(ports, fmt.Sprintf("%s %d", proto, containerPort(t, c, *p.Port, proto)))
			}
			if len(ports) == 0 {
				t.Errorf("rule %d admits every port", i)
				continue
			}
			if slices.Equal(ports, []string{fmt.Sprintf("TCP %d", httpPort)}) {
				continue // the API, from anywhere
			}
			// Any other port: only from sessiond pods, in any namespace (other regions).
			if len(rule.From) == 0 {
				t.Errorf("rule %d admits %v from anywhere", i, ports)
			}
			for _, peer := range rule.From {
				if peer.IPBlock != nil || peer.PodSelector == nil || !selects(peer.PodSelector.MatchLabels, pod.Labels) ||
					peer.NamespaceSelector == nil || len(peer.NamespaceSelector.MatchLabels)+len(peer.NamespaceSelector.MatchExpressions) != 0 {
					t.Errorf("rule %d admits %v from %+v: want sessiond pods of any namespace only", i, ports, peer)
				}
				if _, ok := peer.PodSelector.MatchLabels["sessiond.io/region"]; ok {
					t.Errorf("rule %d admits only one region's pods: regions gossip with each other", i)
				}
			}
			for _, p := range ports {
				internal[p] = true
			}
		}
		gossip, _ := env(c, "SESSIOND_GOSSIP")
		syncAddr, _ := env(c, "SESSIOND_SYNC")
		for _, p := range []string{fmt.Sprintf("TCP %d", portOf(t, gossip)), fmt.Sprintf("UDP %d", portOf(t, gossip)), fmt.Sprintf("TCP %d", portOf(t, syncAddr))} {
			if !internal[p] {
				t.Errorf("%s (gossip or sync) is not admitted from sessiond pods", p)
			}
		}
	})
}

// TestBaseRenders: the base alone renders too (kubectl kustomize infra/k8s/base).
func TestBaseRenders(t *testing.T) {
	if _, err := os.Stat("base/kustomization.yaml"); err != nil {
		t.Fatal(err)
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	if _, err := k.Run(filesys.MakeFsOnDisk(), "base"); err != nil {
		t.Fatalf("kustomize base: %v", err)
	}
}
