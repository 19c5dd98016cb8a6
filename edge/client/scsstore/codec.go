package scsstore

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"
)

// JSONCodec is an scs.Codec that encodes a session as a JSON object with one member per
// session key, so that Store keeps every key as a field of its own and concurrent
// changes to different keys merge (see the package documentation):
//
//	{"deadline":"2026-01-02T03:04:05.123456789Z","v:cart":{"t":"int","v":3},"v:user":"alice"}
//
// Values keep their Go types through a round trip, as scs's getters need (GetInt wants an
// int): strings and bools are plain JSON; other numbers, []byte, time.Time and nil are
// tagged with their type ({"t":"int64","v":42}); any other type must be registered
// (Register) and is tagged with its name, its value encoded by encoding/json. A value of
// an unregistered type fails Encode, as gob does. A value stored by something else than
// this codec decodes as encoding/json decodes into an interface{}.
//
// A session key must be 1–126 bytes of printable UTF-8 (a field name of the key-value
// namespace is at most 128 bytes, and "v:" prefixes it): letters, marks, numbers,
// punctuation, symbols, spaces and the joiners U+200C and U+200D, as the namespace takes
// in a new field name — not control characters, nor format characters such as U+200B or
// U+202E. Encode refuses another key, rather than the commit failing on the server.
//
// Decode refuses what is not a session this codec encoded with a deadline (the
// "deadline" member, a time in RFC 3339 other than the zero time): scs would take a
// session without one as expiring at the zero time, and commit it as already expired.
//
// Safe for concurrent use once its types are registered.
type JSONCodec struct {
	mu     sync.RWMutex
	byName map[string]reflect.Type
	byType map[reflect.Type]string
}

// NewJSONCodec returns a JSONCodec with no registered types.
func NewJSONCodec() *JSONCodec {
	return &JSONCodec{byName: make(map[string]reflect.Type), byType: make(map[reflect.Type]string)}
}

// Register lets values of v's type (a struct, a map, a pointer…) be stored, tagged with
// name; they decode to the same type. A name of a built-in tag, or one registered
// already for another type, panics: a program error, as gob.Register's.
func (c *JSONCodec) Register(name string, v any) {
	t := reflect.TypeOf(v)
	if t == nil || name == "" || builtinTags[name] {
		panic(fmt.Sprintf("scsstore: cannot register %T as %q", v, name))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.byName[name]; ok && old != t {
		panic(fmt.Sprintf("scsstore: %q registered for %s already", name, old))
	}
	c.byName[name], c.byType[t] = t, name
}

var builtinTags = map[string]bool{
	"int": true, "int8": true, "int16": true, "int32": true, "int64": true,
	"uint": true, "uint8": true, "uint16": true, "uint32": true, "uint64": true,
	"float32": true, "float64": true, "bytes": true, "time": true, "nil": true,
}

const (
	deadlineField = "deadline"
	valuePrefix   = "v:"
	maxKey        = 128 - len(valuePrefix)
)

// tagged is the JSON form of a value of a tagged type.
type tagged struct {
	T string          `json:"t"`
	V json.RawMessage `json:"v,omitempty"`
}

// Encode implements scs.Codec.
func (c *JSONCodec) Encode(deadline time.Time, values map[string]any) ([]byte, error) {
	out := make(map[string]json.RawMessage, len(values)+1)
	d, err := json.Marshal(deadline.UTC().Format(time.RFC3339Nano))
	if err != nil {
		return nil, err
	}
	out[deadlineField] = d
	for k, v := range values {
		if !validSessionKey(k) {
			return nil, fmt.Errorf("scsstore: session key %q: want 1 to %d bytes of printable UTF-8 (no control or format characters)", k, maxKey)
		}
		b, err := c.encodeValue(v)
		if err != nil {
			return nil, fmt.Errorf("scsstore: session key %q: %w", k, err)
		}
		out[valuePrefix+k] = b
	}
	return json.Marshal(out)
}

func (c *JSONCodec) encodeValue(v any) (json.RawMessage, error) {
	tag := func(t string, x any) (json.RawMessage, error) {
		b, err := json.Marshal(x)
		if err != nil {
			return nil, err
		}
		return json.Marshal(tagged{T: t, V: b})
	}
	switch x := v.(type) {
	case nil:
		return json.Marshal(tagged{T: "nil"})
	case string, bool:
		return json.Marshal(x)
	case int:
		return tag("int", x)
	case int8:
		return tag("int8", x)
	case int16:
		return tag("int16", x)
	case int32:
		return tag("int32", x)
	case int64:
		return tag("int64", x)
	case uint:
		return tag("uint", x)
	case uint8:
		return tag("uint8", x)
	case uint16:
		return tag("uint16", x)
	case uint32:
		return tag("uint32", x)
	case uint64:
		return tag("uint64", x)
	case float32:
		return tag("float32", x)
	case float64:
		return tag("float64", x)
	case []byte:
		return tag("bytes", base64.StdEncoding.EncodeToString(x))
	case time.Time:
		return tag("time", x.Format(time.RFC3339Nano))
	}
	c.mu.RLock()
	name, ok := c.byType[reflect.TypeOf(v)]
	c.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("type %T not registered (JSONCodec.Register)", v)
	}
	return tag(name, v)
}

// Decode implements scs.Codec. A session without a deadline, or with the zero time as
// its deadline, is an error (see JSONCodec).
func (c *JSONCodec) Decode(b []byte) (time.Time, map[string]any, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil || fields == nil {
		return time.Time{}, nil, errors.New("scsstore: session is not a JSON object (was it written with another codec?)")
	}
	d, ok := fields[deadlineField]
	if !ok {
		return time.Time{}, nil, errors.New("scsstore: session has no deadline (was it written with another codec?)")
	}
	var s string
	if err := json.Unmarshal(d, &s); err != nil {
		return time.Time{}, nil, fmt.Errorf("scsstore: session deadline: %w", err)
	}
	deadline, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("scsstore: session deadline: %w", err)
	}
	if deadline.IsZero() {
		return time.Time{}, nil, errors.New("scsstore: session deadline is the zero time")
	}
	values := make(map[string]any, len(fields))
	for name, raw := range fields {
		k, ok := strings.CutPrefix(name, valuePrefix)
		if !ok {
			continue
		}
		v, err := c.decodeValue(raw)
		if err != nil {
			return time.Time{}, nil, fmt.Errorf("scsstore: session key %q: %w", k, err)
		}
		values[k] = v
	}
	return deadline, values, nil
}

func (c *JSONCodec) decodeValue(raw json.RawMessage) (any, error) {
	var t tagged
	if len(raw) == 0 || raw[0] != '{' || json.Unmarshal(raw, &t) != nil || t.T == "" {
		var v any // not ours: whatever it is, as encoding/json sees it
		err := json.Unmarshal(raw, &v)
		return v, err
	}
	into := func(p any) error { return json.Unmarshal(t.V, p) }
	switch t.T {
	case "nil":
		return nil, nil
	case "int":
		var x int
		return x, into(&x)
	case "int8":
		var x int8
		return x, into(&x)
	case "int16":
		var x int16
		return x, into(&x)
	case "int32":
		var x int32
		return x, into(&x)
	case "int64":
		var x int64
		return x, into(&x)
	case "uint":
		var x uint
		return x, into(&x)
	case "uint8":
		var x uint8
		return x, into(&x)
	case "uint16":
		var x uint16
		return x, into(&x)
	case "uint32":
		var x uint32
		return x, into(&x)
	case "uint64":
		var x uint64
		return x, into(&x)
	case "float32":
		var x float32
		return x, into(&x)
	case "float64":
		var x float64
		return x, into(&x)
	case "bytes":
		var s string
		if err := into(&s); err != nil {
			return nil, err
		}
		return base64.StdEncoding.DecodeString(s)
	case "time":
		var s string
		if err := into(&s); err != nil {
			return nil, err
		}
		return time.Parse(time.RFC3339Nano, s)
	}
	c.mu.RLock()
	typ, ok := c.byName[t.T]
	c.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("type %q not registered (JSONCodec.Register)", t.T)
	}
	p := reflect.New(typ)
	if err := into(p.Interface()); err != nil {
		return nil, err
	}
	return p.Elem().Interface(), nil
}
