// Package version tells which lazypull this is. The Makefile sets Version
// with -ldflags; a plain `go build` falls back to the module's build info.
package version

import "runtime/debug"

// Version is set at link time: -X github.com/lazypull/lazypull/version.Version=v1.2.3
var Version = ""

// String returns the version, or the VCS revision when none was set.
func String() string {
	if Version != "" {
		return Version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "dev-" + s.Value[:12]
		}
	}
	return "dev"
}
