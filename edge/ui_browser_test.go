package edge_test

// The web UI in a real browser: Debian's chromium, driven with chromedp, against a real
// node. Two (and for the revocation a third) separate browser contexts play separate users
// or devices. Every screen is saved as a full-page PNG under $SESSIOND_SCREENSHOTS
// (default: a temporary directory). Any JavaScript exception, console error or CSP
// violation in any tab fails the test. SESSIOND_CDP_DEBUG=1 prints the DevTools protocol
// traffic.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/input"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/sessiond/sessiond/edge"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/client"
)

const (
	chromiumPath = "/usr/bin/chromium"

	uiNodeName = "ui-node-1"
	uiRegion   = "eu-test"

	sessionEndedNotice = "Your session ended: it was revoked or expired. Please sign in again."

	bookmarkHeader = "X-Sessiond-Bookmark"
	bookmarkKey    = "sessiond.bookmark" // where the UI keeps it, in sessionStorage

	stepTimeout = 15 * time.Second // one browser step, waits included
	liveTimeout = 10 * time.Second // a live update or a revocation reaching another tab
)

// cspProbe runs in every document before its own scripts and reports a Content-Security-Policy
// violation as a console error, in addition to the browser's own report to the log.
const cspProbe = `document.addEventListener('securitypolicyviolation', (e) => {
  console.error('CSP violation: ' + e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') + ' at ' + e.sourceFile + ':' + e.lineNumber);
});`

// expectedAPIError matches the browser's log line for an API call answered with a 4xx,
// which the UI shows inline (wrong password, a revoked session, an unknown user).
var expectedAPIError = regexp.MustCompile(`status of 4\d\d `)

func TestBrowserUI(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("browser tests need Debian's chromium at %s (apt-get install -y chromium; .ci/run installs it): %v", chromiumPath, err)
	}
	start := time.Now()
	base := startUINode(t)
	shots := screenshotDir(t)
	b := newBrowser(t, base, shots)

	alice := b.tab("alice")
	bob := b.tab("bob")

	// --- sign up, sign in -------------------------------------------------------------
	alice.open()
	alice.waitHash("#/signin")
	alice.waitVisible("#signin-form")
	alice.shot("signin")

	alice.click("#nav-signup")
	alice.waitHash("#/signup")
	alice.waitVisible("#signup-form")
	alice.shot("signup")
	alice.click("#signup-submit") // empty form: the error is inline, in plain words
	alice.waitText("#signup-error", "Please fill in: Username, Password")
	alice.shot("signup-missing-fields")

	alice.signUp("alice", "correct horse battery", "Alice", "Liddell", "alice@example.com", "1 Rabbit Hole, Wonderland")
	alice.shot("signin-after-signup")
	if got := alice.value("#signin-username"); got != "alice" {
		t.Fatalf("after sign-up the sign-in username is %q, want it filled in with alice", got)
	}
	alice.typeInto("#signin-password", "not the password")
	alice.click("#signin-submit")
	alice.waitText("#signin-error", "Wrong username or password.")
	alice.shot("signin-wrong-password")
	alice.clear("#signin-password")
	alice.typeKeys("#signin-password", "correct horse battery")
	alice.click("#signin-submit")
	alice.waitHash("#/profile")
	alice.waitText("#profile-username", "alice")
	alice.waitText("#whoami", "Signed in as alice")
	alice.waitText("#live-status", "Live")
	alice.shot("profile")

	// --- profile: an inline error, then an edit that survives a reload -----------------
	alice.replaceValue("#profile-email", "not-an-email")
	alice.click("#profile-save")
	alice.waitText("#profile-error", "email must look like name@example.com")
	alice.shot("profile-invalid-email")
	alice.replaceValue("#profile-email", "alice@example.com")
	alice.replaceValue("#profile-first-name", "Alice P.")
	alice.replaceValue("#profile-address", "2 Looking-Glass Lane, Wonderland")
	alice.click("#profile-save")
	alice.waitText("#profile-saved", "Profile saved.")
	alice.shot("profile-saved")

	// Bookmarks: since sign-up (a write) the tab has one; from here on every API request
	// carries it, the stream's and a reloaded page's included, and a write moves it on.
	bookmark := alice.bookmark()
	if bookmark == "" {
		t.Fatalf("after sign-up, sign-in and a profile save, sessionStorage holds no %s", bookmarkKey)
	}
	calls := alice.apiCalls()
	alice.reload()
	alice.waitText("#profile-username", "alice")
	alice.waitValue("#profile-first-name", "Alice P.")
	alice.waitValue("#profile-address", "2 Looking-Glass Lane, Wonderland")
	alice.waitValue("#profile-last-name", "Liddell")
	alice.waitValue("#profile-email", "alice@example.com")
	// The account's data as one download: the page says what it held.
	alice.click("#export-account")
	alice.waitText("#export-done", "your profile, 1 session and 0 messages")
	alice.click("#delete-account") // open the confirmation, look at it, and back out
	alice.waitVisible("#delete-account-confirm")
	alice.shot("profile-delete-confirm")
	alice.click("#delete-account-cancel")
	alice.waitVisible("#delete-account")

	// --- this session: add a key, change it, delete it ----------------------------------
	alice.nav("session")
	alice.waitVisible("#session-id")
	alice.waitVisible("#session-data-empty")
	alice.shot("session-empty")
	alice.typeInto("#data-key", "theme")
	alice.typeInto("#data-value", "dark")
	alice.click("#data-save")
	alice.waitText("#data-saved", "Added “theme”.")
	alice.waitRowValue("theme", "dark")
	alice.waitJS("a write moves the stored bookmark on", fmt.Sprintf(`(sessionStorage.getItem(%s) || '') !== %s`, jsString(bookmarkKey), jsString(bookmark)))
	alice.typeInto("#data-key", "cart")
	alice.typeInto("#data-value", `[1, 2, {"sku": "tea"}]`)
	alice.click("#data-save")
	alice.waitRowValue("cart", `[1,2,{"sku":"tea"}]`)
	alice.shot("session-data")
	alice.click(`[data-testid=session-data-row][data-key="theme"] [data-testid=session-data-edit]`)
	alice.waitValue("#data-key", "theme")
	alice.waitValue("#data-value", "dark")
	alice.replaceValue("#data-value", "light")
	alice.click("#data-save")
	alice.waitText("#data-saved", "Changed “theme”.")
	alice.waitRowValue("theme", "light")
	alice.click(`[data-testid=session-data-row][data-key="cart"] [data-testid=session-data-delete]`)
	alice.waitText("#data-saved", "Deleted “cart”.")
	alice.waitGone(`[data-testid=session-data-row][data-key="cart"]`)
	alice.shot("session-data-changed")
	alice.reload() // the data lives on the server, not in the page
	alice.waitRowValue("theme", "light")
	alice.waitGone(`[data-testid=session-data-row][data-key="cart"]`)
	if got := alice.apiCalls().since(calls); got.requests < 8 || got.bare > 0 {
		t.Fatalf("since the profile save alice's tab made %d API requests, %d without %s (last: %s); want at least 8 and none without",
			got.requests, got.bare, bookmarkHeader, got.lastBare)
	}
	if alice.bookmark() == "" {
		t.Fatalf("after a reload sessionStorage holds no %s", bookmarkKey)
	}

	// --- two users, live messages -------------------------------------------------------
	bob.open()
	bob.waitHash("#/signin")
	bob.click("#nav-signup")
	bob.waitVisible("#signup-form")
	bob.signUp("bob", "bob's long password", "Bob", "Builder", "bob@example.com", "3 Yard Road")
	bob.typeInto("#signin-password", "bob's long password")
	bob.click("#signin-submit")
	bob.waitText("#profile-username", "bob")

	alice.nav("messages")
	alice.waitVisible("#conversations-empty")
	alice.shot("messages-empty")
	alice.typeInto("#new-conversation-username", "nobody-here")
	alice.click("#new-conversation-submit")
	alice.waitHash("#/messages/nobody-here")
	alice.waitText("#thread-error", "There is no user named “nobody-here”.")
	alice.typeInto("#message-body", "hello?")
	alice.click("#message-send")
	alice.waitText("#message-error", "There is no user named “nobody-here”.")
	alice.shot("messages-unknown-user")

	alice.click("#nav-messages")
	alice.waitHash("#/messages")
	// The thread screen has a conversations pane too, with the same form: typing before
	// the list screen replaced it typed into a form about to go, and "Open" then found the
	// new form empty.
	alice.waitGone("#message-body")
	alice.waitVisible("#conversations-empty")
	alice.typeInto("#new-conversation-username", "bob")
	alice.click("#new-conversation-submit")
	alice.waitHash("#/messages/bob")
	alice.waitVisible("#thread-empty")
	alice.shot("thread-empty")

	bob.nav("messages")
	bob.waitVisible("#conversations-empty")
	bob.setHash("#/messages/alice")
	bob.waitVisible("#thread-empty")
	bob.waitText("#live-status", "Live")

	// Enter sends; bob's open thread shows it without a reload.
	alice.typeKeys("#message-body", "Hello Bob! Tea at four?")
	alice.pressEnter()
	alice.waitMessage("Hello Bob! Tea at four?", "alice")
	bob.waitMessage("Hello Bob! Tea at four?", "alice")
	bob.typeInto("#message-body", "Yes — see you there.")
	bob.click("#message-send")
	bob.waitMessage("Yes — see you there.", "bob")
	alice.waitMessage("Yes — see you there.", "bob")
	alice.waitJSWithin("alice's conversation list shows bob's reply", `document.querySelector('[data-testid=conversation-item][data-with="bob"] .conv-preview')?.textContent === 'Yes — see you there.'`, liveTimeout)
	alice.shot("thread")
	bob.shot("thread")

	// A message to a user whose thread is not open: the badges count it, live.
	bob.nav("profile")
	bob.waitText("#profile-username", "bob")
	alice.typeInto("#message-body", "Bring biscuits, please.")
	alice.pressEnter()
	alice.waitMessage("Bring biscuits, please.", "alice")
	bob.waitJS("bob's nav badge shows 1 unread", `(() => { const b = document.getElementById('nav-messages-unread'); return b && !b.hidden && b.textContent === '1'; })()`)
	bob.shot("profile-unread-badge")
	bob.nav("messages")
	bob.waitJS("bob's conversation with alice shows 1 unread", `(() => { const c = document.querySelector('[data-testid=conversation-item][data-with="alice"]'); return c && c.dataset.unread === '1' && c.querySelector('[data-testid=unread-count]')?.textContent === '1'; })()`)
	bob.shot("messages-unread")
	bob.click(`[data-testid=conversation-item][data-with="alice"] a`)
	bob.waitHash("#/messages/alice")
	bob.waitMessage("Bring biscuits, please.", "alice")
	bob.waitJS("opening the thread marks it read", `(() => { const c = document.querySelector('[data-testid=conversation-item][data-with="alice"]'); const b = document.getElementById('nav-messages-unread'); return c && c.dataset.unread === '0' && b && b.hidden; })()`)
	bob.shot("thread-read")

	// A user may be called __proto__: its unread count is a count like any other (as a
	// property name of a plain object it named the prototype, and a reply to it froze the
	// tab in a loop of redraws).
	resp, err := http.Post(strings.TrimSuffix(base, "/")+"/v1/users", "application/json", strings.NewReader(`{"username":"__proto__","password":"correct horse battery"}`))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("register __proto__: %v %v", resp, err)
	}
	resp.Body.Close()
	bob.setHash("#/messages/__proto__")
	bob.waitText("#thread-title", "__proto__")
	bob.typeInto("#message-body", "Who are you?")
	bob.pressEnter()
	bob.waitMessage("Who are you?", "bob")
	bob.nav("profile")
	bob.waitText("#profile-username", "bob")
	bob.nav("messages")
	bob.waitJS("bob's tab draws the conversation with __proto__, read", `document.querySelector('[data-testid=conversation-item][data-with="__proto__"]')?.dataset.unread === '0'`)
	bob.waitJS("bob's nav badge shows nothing unread", `document.getElementById('nav-messages-unread')?.hidden === true`)

	// A link naming no possible user (a crafted one) shows none of its text: the tab goes
	// to the conversations instead, without a history entry for the link.
	bob.setHash("#/messages/support%E2%80%9D.%20Your%20account%20is%20locked")
	bob.waitHash("#/messages")
	bob.waitVisible("#conversations")
	if title := bob.eval("the thread title", `String(document.getElementById('thread-title')?.textContent ?? '')`); strings.Contains(title, "locked") {
		t.Errorf("a crafted link's text is shown: %q", title)
	}

	// The same screens in the dark colour scheme.
	bob.colorScheme("dark")
	bob.shot("dark-thread")
	bob.nav("session")
	bob.waitVisible("#session-data-empty")
	bob.shot("dark-session")
	bob.colorScheme("light")
	bob.setHash("#/messages/alice")
	bob.waitMessage("Bring biscuits, please.", "alice")

	// --- revoking a session in one context signs the other out ---------------------------
	phone := b.tab("alice-second-device")
	phone.open()
	phone.waitVisible("#signin-form")
	phone.typeInto("#signin-username", "alice")
	phone.typeInto("#signin-password", "correct horse battery")
	phone.click("#signin-submit")
	phone.waitText("#profile-username", "alice")
	phone.nav("session")
	phone.waitVisible("#session-id")
	phoneSession := phone.text("#session-id")

	alice.nav("sessions")
	alice.waitJS("alice sees both of her sessions", `document.querySelectorAll('[data-testid=session-item]').length === 2`)
	alice.waitVisible(`[data-testid=session-item][data-current="true"] [data-testid=session-current]`)
	// Each session names the browser that signed it in (headless Chromium says Chrome),
	// where from, and the node.
	alice.waitText(`[data-testid=session-item][data-current="true"] [data-testid=session-device]`, "Chrome on Linux")
	alice.waitText(`[data-testid=session-item][data-current="true"] [data-testid=session-address]`, "127.0.0.1")
	alice.shot("sessions")
	other := fmt.Sprintf(`[data-testid=session-item][data-session-id=%q]`, phoneSession)
	if got := alice.attr(other, "data-current"); got != "false" {
		t.Fatalf("the second device's session %s has data-current=%q in alice's list, want false", phoneSession, got)
	}
	alice.click(other + ` [data-testid=session-revoke]`)
	alice.waitJS("the revoked session leaves the list", `document.querySelectorAll('[data-testid=session-item]').length === 1`)
	// The other device returns to sign-in by itself, with the message, within seconds.
	phone.waitHashWithin("#/signin", liveTimeout)
	phone.waitText("#notice", sessionEndedNotice)
	phone.shot("signin-session-ended")
	alice.waitVisible("#sessions-list")
	if h := alice.hash(); h != "#/sessions" {
		t.Fatalf("alice's own tab left the sessions screen after revoking another session: %s", h)
	}

	// --- the cluster screen ------------------------------------------------------------
	alice.nav("cluster")
	alice.waitText("#cluster-node-name", uiNodeName)
	alice.waitText("#cluster-node-region", uiRegion)
	member := fmt.Sprintf(`[data-testid=cluster-region][data-region=%q] [data-testid=cluster-member][data-name=%q][data-status="alive"]`, uiRegion, uiNodeName)
	alice.waitVisible(member)
	alice.waitText(member+` [data-testid=member-status]`, "alive")
	alice.waitVisible(fmt.Sprintf(`#served-by [data-testid=served-by-row][data-node=%q]`, uiNodeName))
	alice.waitText(`#served-by [data-testid=served-by-node]`, uiNodeName)
	alice.waitText("#served-by-last", "Last reply from "+uiNodeName)
	alice.shot("cluster")
	alice.click("#served-by-background")
	alice.waitJS("background requests are listed when asked for", `!!document.querySelector('#served-by .tag')`)
	alice.setHash("#/no-such-screen")
	alice.waitText("main h1", "Page not found")
	alice.waitJS("no navigation link claims to be the current page", `!document.querySelector('#nav [aria-current]')`)
	alice.shot("not-found")

	// --- a phone-width screen ---------------------------------------------------------
	// Signed out (the revoked device) and signed in (bob), at 375 px: nothing may be wider
	// than the screen.
	phone.phone()
	phone.reload()
	phone.waitVisible("#signin-form")
	phone.checkFits()
	phone.shot("phone-signin")
	phone.nav("signup")
	phone.waitVisible("#signup-form")
	phone.checkFits()
	phone.shot("phone-signup")

	bob.phone()
	bob.reload()
	bob.waitMessage("Bring biscuits, please.", "alice")
	bob.checkFits()
	bob.shot("phone-thread")
	bob.click("#nav-toggle")
	bob.waitVisible("#nav-cluster")
	bob.shot("phone-menu-open")
	for _, s := range []struct{ route, ready string }{
		{"messages", `[data-testid=conversation-item][data-with="alice"]`},
		{"profile", "#profile-save"},
		{"session", "#session-data-empty"},
		{"sessions", `[data-testid=session-item]`},
		{"cluster", "#cluster-node-name"},
	} {
		bob.nav(s.route)
		bob.waitVisible(s.ready)
		bob.checkFits()
		bob.shot("phone-" + s.route)
	}

	// --- more conversations than a page holds ----------------------------------------
	// A hundred more users write to alice: her list (bob and them) takes two pages of
	// GET v1/conversations, and shows every one, newest first.
	seedConversations(t, base, "alice", 100)
	alice.nav("messages")
	alice.waitJSWithin("alice's list shows all 101 conversations, from two pages", `document.querySelectorAll('[data-testid=conversation-item]').length === 101`, liveTimeout)
	if first, last := alice.attr(`[data-testid=conversation-item]:first-child`, "data-with"), alice.attr(`[data-testid=conversation-item]:last-child`, "data-with"); first != "writer099" || last != "bob" {
		t.Fatalf("alice's list runs from %q to %q, want writer099 (the newest) to bob (the oldest)", first, last)
	}

	// --- sign out everywhere, and sign out --------------------------------------------
	phone.desktop()
	phone.nav("signin")
	phone.waitVisible("#signin-form")
	phone.replaceValue("#signin-username", "alice")
	phone.typeInto("#signin-password", "correct horse battery")
	phone.click("#signin-submit")
	phone.waitText("#profile-username", "alice")

	alice.nav("sessions")
	alice.waitJS("alice sees both of her sessions again", `document.querySelectorAll('[data-testid=session-item]').length === 2`)
	alice.click("#sessions-revoke-all")
	alice.waitHash("#/signin")
	alice.waitText("#notice", "You have signed out everywhere")
	alice.waitText("#whoami", "Not signed in")
	alice.shot("signin-signed-out-everywhere")
	phone.waitHashWithin("#/signin", liveTimeout)
	phone.waitText("#notice", sessionEndedNotice)

	bob.desktop()
	bob.unfold()
	bob.click("#nav-signout")
	bob.waitHash("#/signin")
	bob.waitText("#notice", "You have signed out.")
	bob.waitVisible("#nav-signin")
	bob.shot("signin-signed-out")

	b.checkConsoles()
	t.Logf("browser test took %s; %d screenshots in %s", time.Since(start).Round(time.Millisecond), b.shots.Load(), shots)
}

// startUINode starts a single real node on loopback ports and returns its base URL.
func startUINode(t *testing.T) string {
	t.Helper()
	cfg := edge.DefaultConfig()
	cfg.NodeName = uiNodeName
	cfg.Region = uiRegion
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.GossipAddr = "127.0.0.1:0"
	cfg.SyncAddr = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.ClusterKeys = [][]byte{bytes.Repeat([]byte{0x5e}, 32)}
	cfg.FastGossip = true
	cfg.LoginPerAccount = 1000
	cfg.LoginPerAddress = 1000
	cfg.SignInsPerAccount = 1000
	cfg.SignupsPerAddress = 1000
	n, err := edge.NewNode(cfg)
	if err != nil {
		t.Fatalf("NewNode: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := n.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	base := "http://" + n.HTTPAddr() + "/"
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get(base + "readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return base
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node not ready after 10s (last: %v)", err)
		}
		time.Sleep(20 * time.Millisecond) // polling the node from Go, not the page
	}
}

func screenshotDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("SESSIOND_SCREENSHOTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("screenshot directory: %v", err)
	}
	// Old screenshots of this test would mislead whoever looks at the directory.
	old, _ := filepath.Glob(filepath.Join(dir, "[0-9][0-9]-*.png"))
	for _, f := range old {
		os.Remove(f)
	}
	return dir
}

// browser is one chromium process; each tab is a page in a browser context of its own,
// so tabs share neither sessionStorage nor localStorage: they are different people or
// devices.
type browser struct {
	t     *testing.T
	base  string
	dir   string
	ctx   context.Context
	shots atomic.Int32
	start time.Time

	mu       sync.Mutex
	problems []string
	// netChanges counts requests the browser aborted with net::ERR_NETWORK_CHANGED: it
	// does that when the host's network interfaces change (containers or bridges coming and
	// going on a shared machine). Not the page's fault, so not a console problem; a page
	// load it broke is retried, and a failure message mentions it.
	netChanges int
	// api counts each tab's /v1/ requests, and those sent without a bookmark.
	api map[string]apiCount
}

// apiCount is a tab's /v1/ requests so far, as the browser sent them.
type apiCount struct {
	requests, bare int
	lastBare       string // the last request sent without X-Sessiond-Bookmark
}

// since returns the requests counted after c0.
func (c apiCount) since(c0 apiCount) apiCount {
	return apiCount{requests: c.requests - c0.requests, bare: c.bare - c0.bare, lastBare: c.lastBare}
}

func newBrowser(t *testing.T, base, dir string) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("lang", "en-US"),
		chromedp.WindowSize(1280, 900),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithDebugf(func(f string, a ...any) {
		if os.Getenv("SESSIOND_CDP_DEBUG") != "" {
			fmt.Fprintf(os.Stderr, f+"\n", a...)
		}
	}))
	t.Cleanup(cancel)
	attach(t, ctx, "start chromium")
	return &browser{t: t, base: base, dir: dir, ctx: ctx, start: time.Now(), api: map[string]apiCount{}}
}

// attach runs the first action of a chromedp context, which starts its browser or opens
// its tab. That first run binds the browser's or tab's life to the context it is given, so
// it must be ctx itself, not a context with a deadline: the deadline is kept here instead.
func attach(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- chromedp.Do(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: not done within 30s", what)
	}
}

// tab opens a page in a new browser context and watches its console.
func (b *browser) tab(name string) *tab {
	b.t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx,
		chromedp.WithNewBrowserContext(),
		chromedp.WithListener(func(ev any) { b.observe(name, ev) }),
	)
	b.t.Cleanup(cancel)
	attach(b.t, ctx, "open a tab for "+name)
	tb := &tab{t: b.t, b: b, name: name, ctx: ctx}
	tb.do("watch for CSP violations", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: cspProbe})
		return err
	}))
	return tb
}

// observe runs in the tab's event loop: it only records.
func (b *browser) observe(tab string, ev any) {
	var problem string
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		if ev.Request == nil || !strings.Contains(ev.Request.URL, "/v1/") {
			return
		}
		sent := false
		for k, v := range ev.Request.Headers {
			if s, ok := v.(string); ok && s != "" && strings.EqualFold(k, bookmarkHeader) {
				sent = true
			}
		}
		b.mu.Lock()
		c := b.api[tab]
		c.requests++
		if !sent {
			c.bare++
			c.lastBare = ev.Request.Method + " " + ev.Request.URL
		}
		b.api[tab] = c
		b.mu.Unlock()
		return
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		text := d.Text
		if d.Exception != nil && d.Exception.Description != "" {
			text += " " + d.Exception.Description
		}
		problem = fmt.Sprintf("uncaught exception at %s:%d: %s", d.URL, d.LineNumber+1, text)
	case *runtime.EventConsoleAPICalled:
		if ev.Type != runtime.ConsoleAPICalledTypeError && ev.Type != runtime.ConsoleAPICalledTypeAssert {
			return
		}
		var parts []string
		for _, a := range ev.Args {
			switch {
			case a.Description != "":
				parts = append(parts, a.Description)
			case len(a.Value) > 0:
				parts = append(parts, strings.Trim(string(a.Value), `"`))
			default:
				parts = append(parts, string(a.Type))
			}
		}
		problem = "console." + string(ev.Type) + ": " + strings.Join(parts, " ")
	case *cdplog.EventEntryAdded:
		e := ev.Entry
		if e == nil {
			return
		}
		security := e.Source == cdplog.EntrySourceSecurity || e.Source == cdplog.EntrySourceViolation ||
			strings.Contains(e.Text, "Content Security Policy")
		if e.Level != cdplog.EntryLevelError && !security {
			return
		}
		if !security && e.Source == cdplog.EntrySourceNetwork && strings.Contains(e.URL, "/v1/") && expectedAPIError.MatchString(e.Text) {
			return // an API refusal the UI shows in words; the test checks those screens
		}
		if !security && strings.Contains(e.Text, "net::ERR_NETWORK_CHANGED") {
			b.mu.Lock()
			b.netChanges++
			b.mu.Unlock()
			return
		}
		problem = fmt.Sprintf("log %s/%s: %s (%s)", e.Source, e.Level, e.Text, e.URL)
	default:
		return
	}
	b.mu.Lock()
	b.problems = append(b.problems, tab+": "+problem)
	b.mu.Unlock()
}

// problemList returns what the consoles reported so far, for failure messages.
func (b *browser) problemList() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.problems) == 0 {
		return b.networkChangedNote()
	}
	return "\n  the browser also reported:\n  " + strings.Join(b.problems, "\n  ") + b.networkChangedNote()
}

// checkConsoles fails the test if any tab reported an exception, a console error or a CSP
// violation so far.
func (b *browser) checkConsoles() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.problems) > 0 {
		b.t.Fatalf("the browser reported %d problem(s):\n  %s%s", len(b.problems), strings.Join(b.problems, "\n  "), b.networkChangedNote())
	}
}

// networkChangedNote explains a failure that came with net::ERR_NETWORK_CHANGED; b.mu is
// held.
func (b *browser) networkChangedNote() string {
	if b.netChanges == 0 {
		return ""
	}
	return fmt.Sprintf("\n  (the browser aborted %d request(s) with net::ERR_NETWORK_CHANGED: the machine's network"+
		" interfaces changed during the test, e.g. containers starting or stopping; rerun on a quiet machine)", b.netChanges)
}

type tab struct {
	t    *testing.T
	b    *browser
	name string
	ctx  context.Context
}

// do runs browser steps with a deadline, failing the test with what was being done. It
// also fails on anything the consoles reported, so a failure points at its step.
func (tb *tab) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("not done within %s: %w", stepTimeout, err)
		}
		tb.t.Fatalf("%s: %s: %v\n%s%s", tb.name, what, err, tb.describe(), tb.b.problemList())
	}
	tb.b.checkConsoles()
}

// describe tells where the page is, for failure messages.
func (tb *tab) describe() string {
	ctx, cancel := context.WithTimeout(tb.ctx, 2*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.hash + ' | ' + (document.querySelector('main')?.innerText || '').slice(0, 600).replace(/\s+/g, ' ')`))
	if err != nil {
		return "(page state unknown: " + err.Error() + ")"
	}
	return "  page: " + s
}

func (tb *tab) eval(what, expr string) string {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		tb.t.Fatalf("%s: %s: %v\n%s", tb.name, what, err, tb.describe())
	}
	return s
}

// waitJS waits until the expression is truthy.
func (tb *tab) waitJS(what, expr string) {
	tb.t.Helper()
	tb.waitJSWithin(what, expr, stepTimeout-time.Second)
}

func (tb *tab) waitJSWithin(what, expr string, d time.Duration) {
	tb.t.Helper()
	tb.do("wait until "+what, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(d))(ctx, t)
		if errors.Is(err, chromedp.ErrPollingTimeout) {
			return fmt.Errorf("still not true after %s", d)
		}
		return err
	}))
}

func (tb *tab) open() {
	tb.t.Helper()
	tb.load("open "+tb.b.base, chromedp.Navigate(tb.b.base))
}

func (tb *tab) reload() {
	tb.t.Helper()
	tb.load("reload", chromedp.Reload())
}

// load loads the page and waits until the app has drawn a screen. A load that the browser
// broke with net::ERR_NETWORK_CHANGED (a module script aborted) is tried again, twice at
// most; any other failure to start fails the test.
func (tb *tab) load(what string, action chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	for attempt := 1; ; attempt++ {
		tb.b.mu.Lock()
		before := tb.b.netChanges
		tb.b.mu.Unlock()
		tb.do(what, action)
		ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](`!!document.querySelector('main h1')`,
			chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(5*time.Second)))
		cancel()
		tb.b.mu.Lock()
		broken := tb.b.netChanges > before
		tb.b.mu.Unlock()
		switch {
		case err == nil && !broken:
			return
		case broken && attempt < 3:
			tb.t.Logf("%s: %s: the network changed under the page load; loading again", tb.name, what)
			action = chromedp.Reload()
		case err == nil:
			return // the app came up although the network changed
		default:
			tb.t.Fatalf("%s: %s: the app did not draw a screen: %v\n%s%s", tb.name, what, err, tb.describe(), tb.b.problemList())
		}
	}
}

// apiCalls returns the tab's /v1/ requests so far.
func (tb *tab) apiCalls() apiCount {
	tb.b.mu.Lock()
	defer tb.b.mu.Unlock()
	return tb.b.api[tb.name]
}

// bookmark returns the bookmark the UI keeps in sessionStorage.
func (tb *tab) bookmark() string {
	tb.t.Helper()
	return tb.eval("read the stored bookmark", fmt.Sprintf(`sessionStorage.getItem(%s) || ''`, jsString(bookmarkKey)))
}

func (tb *tab) hash() string {
	tb.t.Helper()
	return tb.eval("read the location", `location.hash`)
}

func (tb *tab) setHash(h string) {
	tb.t.Helper()
	tb.eval("go to "+h, fmt.Sprintf(`location.hash = %s`, jsString(h)))
}

func (tb *tab) waitHash(h string) {
	tb.t.Helper()
	tb.waitJS("the screen is "+h, fmt.Sprintf(`location.hash === %s`, jsString(h)))
}

func (tb *tab) waitHashWithin(h string, d time.Duration) {
	tb.t.Helper()
	tb.waitJSWithin("the screen is "+h+" (without user action)", fmt.Sprintf(`location.hash === %s`, jsString(h)), d)
}

func (tb *tab) waitVisible(sel string) {
	tb.t.Helper()
	tb.do("wait for "+sel+" to show", chromedp.WaitVisible(chromedp.CSS(sel)))
}

func (tb *tab) waitGone(sel string) {
	tb.t.Helper()
	tb.waitJS(sel+" is gone", fmt.Sprintf(`!document.querySelector(%s)`, jsString(sel)))
}

// waitText waits until the first element matching sel is visible and its text contains
// want.
func (tb *tab) waitText(sel, want string) {
	tb.t.Helper()
	tb.waitJS(fmt.Sprintf("%s shows %q", sel, want), fmt.Sprintf(
		`(() => { const e = document.querySelector(%s); return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0 && e.innerText.includes(%s); })()`,
		jsString(sel), jsString(want)))
}

func (tb *tab) waitValue(sel, want string) {
	tb.t.Helper()
	tb.waitJS(fmt.Sprintf("%s holds %q", sel, want), fmt.Sprintf(
		`document.querySelector(%s)?.value === %s`, jsString(sel), jsString(want)))
}

// waitRowValue waits for the session data row of key to show value.
func (tb *tab) waitRowValue(key, value string) {
	tb.t.Helper()
	tb.waitJS(fmt.Sprintf("session data %s = %s", key, value), fmt.Sprintf(
		`document.querySelector('[data-testid=session-data-row][data-key=' + CSS.escape(%s) + '] [data-testid=session-data-value]')?.textContent === %s`,
		jsString(key), jsString(value)))
}

// waitMessage waits for a message in the open thread, without reloading.
func (tb *tab) waitMessage(text, from string) {
	tb.t.Helper()
	tb.waitJSWithin(fmt.Sprintf("the thread shows %q from %s", text, from), fmt.Sprintf(
		`[...document.querySelectorAll('#thread [data-testid=message]')].some((m) => m.dataset.from === %s && m.querySelector('[data-testid=message-text]')?.textContent === %s)`,
		jsString(from), jsString(text)), liveTimeout)
}

func (tb *tab) text(sel string) string {
	tb.t.Helper()
	return tb.eval("read "+sel, fmt.Sprintf(`document.querySelector(%s)?.textContent ?? ''`, jsString(sel)))
}

func (tb *tab) value(sel string) string {
	tb.t.Helper()
	return tb.eval("read "+sel, fmt.Sprintf(`document.querySelector(%s)?.value ?? ''`, jsString(sel)))
}

func (tb *tab) attr(sel, name string) string {
	tb.t.Helper()
	return tb.eval("read "+sel+"@"+name, fmt.Sprintf(`document.querySelector(%s)?.getAttribute(%s) ?? ''`, jsString(sel), jsString(name)))
}

func (tb *tab) click(sel string) {
	tb.t.Helper()
	tb.do("click "+sel, chromedp.Click(chromedp.CSS(sel)))
}

// typeInto puts text at the caret of a field, as typing, pasting or an input method
// does: the page gets the same input events. It inserts the text in one go, which
// keeps the test quick; keys go through the keyboard path in typeKeys and pressEnter.
func (tb *tab) typeInto(sel, text string) {
	tb.t.Helper()
	tb.do("type into "+sel, chromedp.Focus(chromedp.CSS(sel), chromedp.NodeVisible), insertText(text))
}

// typeKeys types text key by key.
func (tb *tab) typeKeys(sel, text string) {
	tb.t.Helper()
	tb.do("type keys into "+sel, chromedp.SendKeys(chromedp.CSS(sel), text))
}

func insertText(text string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, input.InsertText, input.InsertTextParams{Text: text})
		return err
	})
}

// clear empties a text field as select-all and delete would. (chromedp.Clear only resets
// the value attribute, which does not change a field the user or a script already filled.)
func (tb *tab) clear(sel string) {
	tb.t.Helper()
	tb.replaceValue(sel, "")
}

// replaceValue selects the whole text of a field and types text over it.
func (tb *tab) replaceValue(sel, text string) {
	tb.t.Helper()
	steps := []chromedp.Action[chromedp.Void]{
		chromedp.Focus(chromedp.CSS(sel), chromedp.NodeVisible),
		chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.querySelector(%s).select()`, jsString(sel))),
	}
	if text == "" {
		steps = append(steps, chromedp.KeyEvent(kb.Delete))
	} else {
		steps = append(steps, insertText(text))
	}
	tb.do("replace the text of "+sel, steps...)
	tb.waitValue(sel, text)
}

// pressEnter presses Enter in the focused element as a keyboard does: a keydown that
// carries the text "\r" (a page that cancels the keydown gets no keypress) and a keyup.
func (tb *tab) pressEnter() {
	tb.t.Helper()
	tb.do("press Enter", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		for _, p := range []input.DispatchKeyEventParams{
			{Type: input.DispatchKeyEventTypeKeyDown, Key: "Enter", Code: "Enter", Text: "\r", UnmodifiedText: "\r", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13},
			{Type: input.DispatchKeyEventTypeKeyUp, Key: "Enter", Code: "Enter", WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13},
		} {
			if _, err := cdp.Call(ctx, t, input.DispatchKeyEvent, p); err != nil {
				return err
			}
		}
		return nil
	}))
}

// nav follows a link of the navigation, through the menu button where the screen is
// narrow enough to fold the navigation away.
func (tb *tab) nav(route string) {
	tb.t.Helper()
	tb.unfold()
	tb.click("#nav-" + route)
	tb.waitHash("#/" + route)
}

// unfold opens the navigation menu where the screen is narrow enough to fold it away.
func (tb *tab) unfold() {
	tb.t.Helper()
	folded := tb.eval("is the navigation folded", `String(getComputedStyle(document.getElementById('nav-toggle')).display !== 'none' && !document.body.classList.contains('nav-open'))`)
	if folded == "true" {
		tb.click("#nav-toggle")
	}
}

// phone turns the tab into a 375 px wide phone screen; desktop undoes it.
func (tb *tab) phone() {
	tb.t.Helper()
	tb.do("emulate a phone", chromedp.EmulateViewport(375, 812, chromedp.EmulatePortrait, chromedp.EmulateMobile, chromedp.EmulateScale(2)))
}

func (tb *tab) desktop() {
	tb.t.Helper()
	tb.do("back to the desktop viewport", chromedp.EmulateViewport(1280, 900, chromedp.EmulateLandscape))
}

// colorScheme makes the page see prefers-color-scheme as scheme ("light" or "dark").
func (tb *tab) colorScheme(scheme string) {
	tb.t.Helper()
	tb.do("prefer the "+scheme+" colour scheme", chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
		})
		return err
	}))
}

// checkFits fails when the page is wider than the screen (sideways scrolling on a phone).
func (tb *tab) checkFits() {
	tb.t.Helper()
	// Tables sit in a sideways-scrolling wrapper; they too must fit, or their last columns
	// are off screen.
	got := tb.eval("measure the page", `(() => {
  const name = (e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + String(e.className).trim().replace(/\s+/g, '.') : '');
  const wide = [...document.querySelectorAll('main *')].filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.table-wrap')).map(name);
  const tables = [...document.querySelectorAll('main .table-wrap')].filter((w) => w.scrollWidth > w.clientWidth + 1).map((w) => name(w.firstElementChild) + ' (' + w.scrollWidth + ' px)');
  return JSON.stringify({vw: window.innerWidth, sw: document.documentElement.scrollWidth, wide: wide.concat(tables).slice(0, 5)});
})()`)
	var m struct {
		VW, SW int
		Wide   []string
	}
	if err := json.Unmarshal([]byte(got), &m); err != nil {
		tb.t.Fatalf("%s: measure the page: %v (%s)", tb.name, err, got)
	}
	if m.SW > m.VW || len(m.Wide) > 0 {
		tb.t.Errorf("%s: %s is wider than the %d px screen: scroll width %d px; too wide: %v", tb.name, tb.hash(), m.VW, m.SW, m.Wide)
	}
}

// shot saves a full-page PNG of the tab as NN-tab-name.png.
func (tb *tab) shot(name string) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	// Let the page settle: fonts loaded and two frames drawn since the last change. Scroll
	// to the top first: a full-page capture of a scrolled page draws the sticky top bar
	// where the scroll left it, halfway down the picture.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[chromedp.Void](
		`window.scrollTo(0, 0), document.fonts.ready.then(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))))`,
		chromedp.EvalAwaitPromise)); err != nil {
		tb.t.Fatalf("%s: settle before screenshot %s: %v", tb.name, name, err)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		tb.t.Fatalf("%s: screenshot %s: %v", tb.name, name, err)
	}
	n := tb.b.shots.Add(1)
	file := filepath.Join(tb.b.dir, fmt.Sprintf("%02d-%s-%s.png", n, tb.name, name))
	if err := os.WriteFile(file, png, 0o644); err != nil {
		tb.t.Fatalf("save screenshot: %v", err)
	}
	if testing.Verbose() {
		tb.t.Logf("%5.1fs %s", time.Since(tb.b.start).Seconds(), filepath.Base(file))
	}
}

// signUp fills and sends the sign-up form, and waits for the sign-in screen it leads to.
func (tb *tab) signUp(username, password, first, last, email, address string) {
	tb.t.Helper()
	for _, f := range [][2]string{
		{"#signup-username", username}, {"#signup-password", password}, {"#signup-first-name", first},
		{"#signup-last-name", last}, {"#signup-email", email}, {"#signup-address", address},
	} {
		tb.replaceValue(f[0], f[1])
	}
	tb.click("#signup-submit")
	tb.waitHash("#/signin")
	tb.waitText("#notice", "Account created for "+username+". Sign in to continue.")
	tb.waitValue("#signin-username", username)
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// seedConversations registers n users (writer000 …) through the API at base, each of
// which sends to a message, one after another.
func seedConversations(t *testing.T, base, to string, n int) {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		c, err := client.New(client.Config{Endpoints: []string{base}})
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("writer%03d", i)
		if _, err := c.Register(ctx, api.RegisterRequest{Username: name, Password: "a long enough password"}); err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
		if _, err := c.Login(ctx, api.LoginRequest{Username: name, Password: "a long enough password"}); err != nil {
			t.Fatalf("login %s: %v", name, err)
		}
		if _, err := c.SendMessage(ctx, api.SendMessageRequest{To: to, Body: "hello from " + name}); err != nil {
			t.Fatalf("%s sends to %s: %v", name, to, err)
		}
	}
}
