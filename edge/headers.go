package edge

import (
	"strings"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// contentSecurityPolicy allows only the node's own scripts, styles and API: the UI's
// policy.
const contentSecurityPolicy = "default-src 'self'; connect-src 'self'; img-src 'self' data:; " +
	"style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// apiContentSecurityPolicy is the policy of API responses (/v1/...), which are never
// documents that load anything: OWASP's recommendation for a REST API.
const apiContentSecurityPolicy = "default-src 'none'; frame-ancestors 'none'"

// responseHeaders are the headers every response carries, errors included: one set for the
// API and one for everything else (the UI, health, metrics). They are built once per node
// in fasthttp's canonical form, so that setting one per request skips c.Set's normalising
// and copying through scratch buffers.
type responseHeaders struct {
	api, other []headerField
}

type headerField struct{ key, value []byte }

func newResponseHeaders(nodeName string) responseHeaders {
	common := [][2]string{
		{"X-Served-By", nodeName},
		{fiber.HeaderXContentTypeOptions, "nosniff"},
		{fiber.HeaderXFrameOptions, "DENY"},
		{fiber.HeaderReferrerPolicy, "no-referrer"},
		{"Cross-Origin-Opener-Policy", "same-origin"},
	}
	return responseHeaders{
		api: canonicalHeaders(append(common[:len(common):len(common)],
			[2]string{fiber.HeaderContentSecurityPolicy, apiContentSecurityPolicy},
			[2]string{fiber.HeaderCacheControl, "no-store"})),
		other: canonicalHeaders(append(common[:len(common):len(common)],
			[2]string{fiber.HeaderContentSecurityPolicy, contentSecurityPolicy},
			[2]string{fiber.HeaderCacheControl, "no-cache"})), // UI file names carry no hash: revalidate
	}
}

// canonicalHeaders returns fields as fasthttp's ResponseHeader.Set stores them: keys
// normalised, and CR and LF in values made spaces (a node name cannot split a header).
func canonicalHeaders(fields [][2]string) []headerField {
	out := make([]headerField, len(fields))
	for i, f := range fields {
		out[i] = headerField{
			key: fasthttp.AppendNormalizedHeaderKey(nil, f[0]),
			value: []byte(strings.Map(func(r rune) rune {
				if r == '\r' || r == '\n' {
					return ' '
				}
				return r
			}, f[1])),
		}
	}
	return out
}

// commonHeaders sets what every response carries, errors included.
func (n *Node) commonHeaders(c *fiber.Ctx) {
	fields := n.headers.other
	if strings.HasPrefix(c.Path(), "/v1/") {
		fields = n.headers.api
	}
	h := &c.Response().Header
	for _, f := range fields {
		h.SetCanonical(f.key, f.value)
	}
}
