package edge

import "strings"

// deviceLabel names the client of a User-Agent header the way people recognise their
// own devices in a session list: "Firefox on Linux", "Safari on iPhone", "curl". It
// knows the common browsers and systems, falls back to the first product token for
// other clients, and returns "" for an empty header. The result is at most
// maxDeviceLabel bytes of printable ASCII without markup, whatever the header holds.
func deviceLabel(ua string) string {
	if strings.TrimSpace(ua) == "" {
		return ""
	}
	browser := firstMatch(ua, browsers)
	system := firstMatch(ua, systems)
	switch {
	case browser != "" && system != "":
		return browser + " on " + system
	case browser != "":
		return browser
	}
	product := productToken(ua)
	if system != "" {
		if product == "" {
			return system
		}
		return product + " on " + system
	}
	return product
}

// maxDeviceLabel bounds what deviceLabel returns.
const maxDeviceLabel = 48

// uaRule names a client when its User-Agent contains marker (and none of unless).
type uaRule struct {
	marker string
	name   string
	unless []string
}

// browsers, in order: many browsers name others in their header for compatibility
// (Chrome's says Safari; Edge's and Opera's say Chrome), so the specific come first.
var browsers = []uaRule{
	{marker: "Edg/", name: "Edge"},
	{marker: "EdgA/", name: "Edge"},
	{marker: "EdgiOS/", name: "Edge"},
	{marker: "OPR/", name: "Opera"},
	{marker: "SamsungBrowser/", name: "Samsung Internet"},
	{marker: "Vivaldi/", name: "Vivaldi"},
	{marker: "Firefox/", name: "Firefox"},
	{marker: "FxiOS/", name: "Firefox"},
	{marker: "CriOS/", name: "Chrome"},
	{marker: "Chromium/", name: "Chromium"},
	{marker: "Chrome/", name: "Chrome"},
	{marker: "Safari/", name: "Safari", unless: []string{"Android"}},
}

// systems, in order: iPhone and Android headers also say "like Mac OS X" and "Linux".
var systems = []uaRule{
	{marker: "iPhone", name: "iPhone"},
	{marker: "iPad", name: "iPad"},
	{marker: "Android", name: "Android"},
	{marker: "CrOS", name: "ChromeOS"},
	{marker: "Windows", name: "Windows"},
	{marker: "Mac OS X", name: "macOS"},
	{marker: "Macintosh", name: "macOS"},
	{marker: "Linux", name: "Linux"},
	{marker: "FreeBSD", name: "FreeBSD"},
}

func firstMatch(ua string, rules []uaRule) string {
	for _, r := range rules {
		if !strings.Contains(ua, r.marker) {
			continue
		}
		excluded := false
		for _, u := range r.unless {
			excluded = excluded || strings.Contains(ua, u)
		}
		if !excluded {
			return r.name
		}
	}
	return ""
}

// productToken returns the name of the header's first product ("curl" of
// "curl/8.5.0"): its leading letters, digits and ".+_-", cut to maxDeviceLabel/2.
func productToken(ua string) string {
	ua = strings.TrimSpace(ua)
	n := 0
	for n < len(ua) && n < maxDeviceLabel/2 && tokenByte(ua[n]) {
		n++
	}
	return ua[:n]
}

func tokenByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(".+_-", c) >= 0
}
