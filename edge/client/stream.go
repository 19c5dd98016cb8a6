package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/sessiond/sessiond/edge/api"
)

// Stream is an open live stream of the caller's messages (GET /v1/messages/stream,
// Server-Sent Events). Next is not safe for concurrent use; Close may be called from any
// goroutine, also to end a Next that waits.
type Stream struct {
	// ServedBy names the node that serves the stream.
	ServedBy string

	body    io.Closer
	sc      *bufio.Scanner
	cancel  context.CancelFunc
	strict  bool
	once    sync.Once
	pending *event // read while opening
}

// event is one Server-Sent Event.
type event struct {
	name, data string
}

// maxEventLine bounds one line of the stream: a message of 4 KiB escaped fits many times.
const maxEventLine = 1 << 20

// StreamMessages opens the caller's live message stream on one endpoint (failing over
// while it opens, as for any read) and returns once the node has subscribed it: every
// message committed on that node afterwards, to or from the caller, comes through Next.
// The stream lives until ctx ends, Close, the node ends it, or its session ends. A user
// holds at most 8 streams on each node: beyond that, ErrRateLimited (Retry-After 15 s).
// Streamed messages carry no bookmark: to keep one in sight on other nodes, list its
// conversation (Messages) before moving on.
func (c *Client) StreamMessages(ctx context.Context) (*Stream, error) {
	resp, rep, err := c.exchange(ctx, &Request{Method: http.MethodGet, Path: "/v1/messages/stream", Idempotent: true}, nil, true)
	if err != nil {
		return nil, err
	}
	if ct := resp.stream.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.cancel()
		_ = resp.stream.Body.Close() // refused: nothing to read
		return nil, fmt.Errorf("client: stream from %s: Content-Type %q, want text/event-stream", rep.Endpoint, ct)
	}
	sc := bufio.NewScanner(resp.stream.Body)
	sc.Buffer(make([]byte, 0, 4096), maxEventLine)
	s := &Stream{ServedBy: rep.Header.Get(api.HeaderServedBy), body: resp.stream.Body, sc: sc, cancel: resp.cancel, strict: c.cfg.DisallowUnknownFields}
	// The node writes ": connected" once it has subscribed the stream; AttemptTimeout
	// bounds the wait for it too.
	ev, comment, err := s.read()
	if !resp.opened() || err != nil {
		_ = s.Close() // failed to open: the read's error is the one to report
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, &TransportError{Method: http.MethodGet, Path: "/v1/messages/stream", Endpoint: rep.Endpoint, Err: err}
	}
	if !comment {
		s.pending = &ev
	}
	return s, nil
}

// Next returns the next message. When the node ends the stream because the session
// ended, it returns a *StreamEndError (errors.Is ErrSessionEnded); when the stream closes
// otherwise (the node shuts down, Close, ctx), io.EOF or the read's error. A caller that
// wants no message missed reconnects and pages the conversations from its cursors.
func (s *Stream) Next() (api.Message, error) {
	for {
		var ev event
		if s.pending != nil {
			ev, s.pending = *s.pending, nil
		} else {
			var comment bool
			var err error
			if ev, comment, err = s.read(); err != nil {
				return api.Message{}, err
			}
			if comment {
				continue
			}
		}
		switch ev.name {
		case api.EventMessage:
			var m api.Message
			if err := s.unmarshal(ev.data, &m); err != nil {
				return api.Message{}, fmt.Errorf("client: stream message %q: %w", ev.data, err)
			}
			return m, nil
		case api.EventEnd:
			var end api.StreamEnd
			if err := s.unmarshal(ev.data, &end); err != nil {
				return api.Message{}, fmt.Errorf("client: stream end %q: %w", ev.data, err)
			}
			_ = s.Close() // the node closes it too
			return api.Message{}, &StreamEndError{Reason: end.Reason}
		}
		// An event of a later version: skipped.
	}
}

func (s *Stream) unmarshal(data string, v any) error {
	dec := json.NewDecoder(strings.NewReader(data))
	if s.strict {
		dec.DisallowUnknownFields()
	}
	return dec.Decode(v)
}

// read reads one block of lines up to a blank line: an event, or comments only
// (comment is then true).
func (s *Stream) read() (ev event, comment bool, err error) {
	var data []string
	seen := false
	for s.sc.Scan() {
		line := s.sc.Text()
		if line == "" {
			if !seen {
				continue
			}
			if ev.name == "" && data == nil {
				return ev, true, nil
			}
			if ev.name == "" {
				ev.name = api.EventMessage // the SSE default event type
			}
			ev.data = strings.Join(data, "\n")
			return ev, false, nil
		}
		seen = true
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "": // a comment
		case "event":
			ev.name = value
		case "data":
			data = append(data, value)
		}
	}
	if err := s.sc.Err(); err != nil {
		return ev, false, err
	}
	return ev, false, io.EOF
}

// Close ends the stream and frees its connection. It is safe to call more than once;
// later calls return nil.
func (s *Stream) Close() error {
	var err error
	s.once.Do(func() {
		s.cancel()
		err = s.body.Close()
	})
	return err
}
