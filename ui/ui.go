// Package ui is the product's static web UI: plain HTML, CSS and JavaScript
// modules, embedded into the binary with no build step.
//
// It imports nothing of the project; edge serves FS at "/". The pages talk to
// the HTTP API with relative URLs only and carry no inline script or style, so
// they run under a strict Content-Security-Policy (see README.md).
package ui

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// FS returns the UI files rooted at the static directory: index.html,
// app.css, favicon.svg and js/*.js. The returned file system is read-only and
// safe for concurrent use.
func FS() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		// fs.Sub fails only on an invalid path name; "static" is a constant.
		panic("ui: " + err.Error())
	}
	return sub
}
