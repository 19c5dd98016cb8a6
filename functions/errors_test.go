package functions

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

// errBoom stands for a store failure: not an *Error, so clients see only "internal".
var errBoom = errors.New("disk on fire")

func TestErrorCode(t *testing.T) {
	notFound := Errorf(ENotFound, "no user %q", "bob")
	for _, tc := range []struct {
		name          string
		err           error
		code, message string
	}{
		{"Nil", nil, "", ""},
		{"Error", notFound, ENotFound, `no user "bob"`},
		{"Wrapped", fmt.Errorf("lookup: %w", notFound), ENotFound, `no user "bob"`},
		{"Joined", errors.Join(errBoom, notFound), ENotFound, `no user "bob"`},
		{"Plain", errBoom, EInternal, "internal error"},
		{"WrappedPlain", fmt.Errorf("read record: %w", errBoom), EInternal, "internal error"},
		{"Context", context.Canceled, EInternal, "internal error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ErrorCode(tc.err); got != tc.code {
				t.Errorf("ErrorCode=%q, want %q", got, tc.code)
			}
			if tc.err == nil {
				return // no message to show
			}
			if got := ErrorMessage(tc.err); got != tc.message {
				t.Errorf("ErrorMessage=%q, want %q", got, tc.message)
			}
		})
	}
	t.Run("Error", func(t *testing.T) {
		if got, want := notFound.Error(), `not_found: no user "bob"`; got != want {
			t.Errorf("Error()=%q, want %q", got, want)
		}
	})
}
