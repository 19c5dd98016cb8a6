package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"testing"

	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/client"
)

// endpoint is the address of a running node, for the examples: TestMain starts one.
var endpoint string

func TestMain(m *testing.M) {
	os.Exit(runWithNode(m))
}

func runWithNode(m *testing.M) int {
	dir, err := os.MkdirTemp("", "sessiond-client-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	n, err := openNode(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer n.Close(context.Background())
	endpoint = "http://" + n.HTTPAddr()
	return m.Run()
}

func Example() {
	ctx := context.Background()
	// Several endpoints: a client moves on when one refuses connections or times out.
	c, err := client.New(client.Config{Endpoints: []string{endpoint}})
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.Register(ctx, api.RegisterRequest{Username: "carol", Password: "a long passphrase"})
	if err != nil && !errors.Is(err, client.ErrUsernameTaken) {
		log.Fatal(err)
	}
	// Login keeps the token; every later call sends it, and the bookmark of what this
	// client wrote, so any node shows it its own writes.
	if _, err := c.Login(ctx, api.LoginRequest{Username: "carol", Password: "a long passphrase"}); err != nil {
		log.Fatal(err)
	}
	s, err := c.PatchSession(ctx, map[string]any{"cart": []int{42}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(s.Username, string(s.Data["cart"]))

	_, err = c.SendMessage(ctx, api.SendMessageRequest{To: "nobody", Body: "hi"})
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println(e.Status, e.Code)
	}
	// Output:
	// carol [42]
	// 404 not_found
}
