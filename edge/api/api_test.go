package api

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestImports: the package uses the standard library only, so that clients pull in
// nothing of the node.
func TestImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if first, _, _ := strings.Cut(path, "/"); strings.Contains(first, ".") {
				t.Errorf("%s imports %s: package api uses the standard library only", f, path)
			}
		}
	}
}

// TestWire pins the JSON names and order of the objects docs/API.md shows.
func TestWire(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	lag, parts := int64(12), 4096
	for _, tc := range []struct {
		name string
		v    any
		want string
	}{
		{"User", UserResponse{User{ID: "u1", Username: "alice", CreatedAt: at, Profile: Profile{FirstName: "Alice", LastName: "L", Email: "a@example.com", Address: "1 St"}}},
			`{"user":{"id":"u1","username":"alice","created_at":"2026-01-02T03:04:05.000000006Z","profile":{"first_name":"Alice","last_name":"L","email":"a@example.com","address":"1 St"}}}`},
		{"Session", SessionsResponse{[]Session{{ID: "s1", UserID: "u1", Username: "alice", CreatedAt: at, LastUsedAt: at, ExpiresAt: at, IdleExpiresAt: at, Data: map[string]json.RawMessage{"cart": json.RawMessage(`[1,2]`)}, Current: true}}},
			`{"sessions":[{"id":"s1","user_id":"u1","username":"alice","created_at":"2026-01-02T03:04:05.000000006Z","last_used_at":"2026-01-02T03:04:05.000000006Z","expires_at":"2026-01-02T03:04:05.000000006Z","idle_expires_at":"2026-01-02T03:04:05.000000006Z","data":{"cart":[1,2]},"current":true}]}`},
		{"Login", LoginResponse{Token: "t", Device: "d", Session: Session{ID: "s1", CreatedAt: at, LastUsedAt: at, ExpiresAt: at, IdleExpiresAt: at}},
			`{"device":"d","session":{"id":"s1","user_id":"","username":"","created_at":"2026-01-02T03:04:05.000000006Z","last_used_at":"2026-01-02T03:04:05.000000006Z","expires_at":"2026-01-02T03:04:05.000000006Z","idle_expires_at":"2026-01-02T03:04:05.000000006Z","data":null},"token":"t"}`},
		{"LoginRequest", LoginRequest{Username: "alice", Password: "pw"}, `{"username":"alice","password":"pw"}`},
		{"CreateServiceSession", CreateServiceSessionRequest{Subject: "a@example.com", TTL: 3600}, `{"subject":"a@example.com","ttl":3600}`},
		{"ServiceSession", ServiceSessionResponse{Token: "t", Session: Session{ID: "s1", UserID: "u1", Subject: "a@example.com", CreatedAt: at, LastUsedAt: at, ExpiresAt: at, IdleExpiresAt: at}},
			`{"session":{"id":"s1","user_id":"u1","username":"","created_at":"2026-01-02T03:04:05.000000006Z","last_used_at":"2026-01-02T03:04:05.000000006Z","expires_at":"2026-01-02T03:04:05.000000006Z","idle_expires_at":"2026-01-02T03:04:05.000000006Z","data":null,"subject":"a@example.com"},"token":"t"}`},
		{"IntrospectInactive", IntrospectResponse{}, `{"active":false}`},
		{"IntrospectActive", IntrospectResponse{Active: true, User: &SubjectUser{ID: "u1", Subject: "a"}}, `{"active":true,"user":{"id":"u1","subject":"a"}}`},
		{"App", CreateAppResponse{App: App{Name: "shop", CreatedAt: at, Keys: []AppKey{{ID: "0", CreatedAt: at, RetiresAt: &at}}}, Key: "k"},
			`{"app":{"name":"shop","created_at":"2026-01-02T03:04:05.000000006Z","revoked":false,"keys":[{"id":"0","created_at":"2026-01-02T03:04:05.000000006Z","retires_at":"2026-01-02T03:04:05.000000006Z"}]},"key":"k"}`},
		{"Send", SendMessageRequest{To: "bob", Body: "hi"}, `{"to":"bob","body":"hi"}`},
		{"Page", Page{Messages: []Message{{ID: "m1", From: "alice", To: "bob", Body: "hi", SentAt: at}}, Next: "c"},
			`{"messages":[{"id":"m1","from":"alice","to":"bob","body":"hi","sent_at":"2026-01-02T03:04:05.000000006Z"}],"next":"c"}`},
		{"Conversations", ConversationsResponse{[]Conversation{{With: "bob", LastMessage: Message{ID: "m1", SentAt: at}, Count: 3}}, "c"},
			`{"conversations":[{"with":"bob","last_message":{"id":"m1","from":"","to":"","body":"","sent_at":"2026-01-02T03:04:05.000000006Z"},"count":3}],"next":"c"}`},
		{"KVItem", KVItemResponse{KVItem{Key: "tok", Value: map[string]json.RawMessage{"cart": json.RawMessage(`[1]`)}, ExpiresAt: at}},
			`{"item":{"key":"tok","value":{"cart":[1]},"expires_at":"2026-01-02T03:04:05.000000006Z"}}`},
		{"KVList", KVListResponse{Items: []KVItem{{Key: "tok", ExpiresAt: at}}, Next: "AAB0b2s"},
			`{"items":[{"key":"tok","value":null,"expires_at":"2026-01-02T03:04:05.000000006Z"}],"next":"AAB0b2s"}`},
		{"KVPut", KVPutRequest{Value: map[string]json.RawMessage{"a": json.RawMessage(`1`)}, TTL: 60}, `{"value":{"a":1},"ttl":60}`},
		{"KVPatch", KVPatchRequest{Value: map[string]json.RawMessage{"a": json.RawMessage(`null`)}}, `{"value":{"a":null}}`},
		{"Cluster", ClusterInfo{Node: Member{Name: "n1", ID: "i1", Region: "eu", Status: MemberAlive}, Members: []Member{{Name: "n2", ID: "i2", Region: "us", Status: MemberSuspect, Addr: "10.0.0.2:7946", LagMS: &lag, Partitions: &parts}},
			Placement: &Placement{Replicas: 2, Partitions: 4096, Holds: 2048, Ideal: 2048, Moving: Moving{Keys: 1}}},
			`{"node":{"name":"n1","id":"i1","region":"eu","status":"alive"},"members":[{"name":"n2","id":"i2","region":"us","status":"suspect","addr":"10.0.0.2:7946","lag_ms":12,"partitions":4096}],"placement":{"replicas":2,"partitions":4096,"holds":2048,"ideal":2048,"moving":{"partitions":0,"keys":1,"dropped":0}}}`},
		{"Error", ErrorResponse{Error{Code: CodeBehind, Message: "m"}}, `{"error":{"code":"behind","message":"m"}}`},
		{"ProfilePatch", PatchProfileRequest{&ProfilePatch{Address: new(string)}}, `{"profile":{"address":""}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(tc.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Errorf("JSON=%s\nwant %s", b, tc.want)
			}
		})
	}
}
