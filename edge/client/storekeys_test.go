package client

import (
	"strings"
	"testing"
)

func TestIsRandomID(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   string
		want bool
	}{
		{"OK", RandomID(), true},
		{"OKHashed", "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU", true}, // SHA-256 of "", as scs's HashTokenInStore
		{"ErrEmpty", "", false},
		{"ErrName", "feature-flags", false},
		{"ErrShort", RandomID()[:42], false},
		{"ErrLong", RandomID() + "A", false},
		{"ErrPadded", RandomID() + "=", false},
		{"ErrStdAlphabet", "+" + RandomID()[1:], false},
		{"ErrSlash", "/" + RandomID()[1:], false},
		{"ErrDot", "." + RandomID()[1:], false},
		{"ErrNewline", "\n" + RandomID()[1:], false},
		{"ErrBase32", "MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43UOV3HO6DZPIYTEMZUGU3A", false}, // a gorilla FilesystemStore id
		{"ErrNonCanonical", "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFV", false},    // last 2 bits set
	} {
		if got := IsRandomID(tc.id); got != tc.want {
			t.Errorf("%s: IsRandomID(%q)=%v, want %v", tc.name, tc.id, got, tc.want)
		}
	}
}

func TestValidKeyPrefix(t *testing.T) {
	for _, prefix := range []string{"s:", "a", "app.sessions@eu+1=~_-:", strings.Repeat("p", MaxKeyPrefix)} {
		if err := ValidKeyPrefix(prefix); err != nil {
			t.Errorf("ValidKeyPrefix(%q): %v", prefix, err)
		}
	}
	for _, prefix := range []string{"", "a/b", "a b", "é:", "a%3A", strings.Repeat("p", MaxKeyPrefix+1)} {
		if ValidKeyPrefix(prefix) == nil {
			t.Errorf("ValidKeyPrefix(%q) = nil", prefix)
		}
	}
}

func TestPrintableFieldName(t *testing.T) {
	for name, want := range map[string]bool{
		"theme": true, "é 1.x": true, "👩\u200d💻": true, "a\u200cb": true,
		"a\u200bb": false, "\u202eevil": false, "\ufeffx": false, "a\nb": false, "a\x00": false,
	} {
		if got := PrintableFieldName(name); got != want {
			t.Errorf("PrintableFieldName(%q)=%v, want %v", name, got, want)
		}
	}
}
