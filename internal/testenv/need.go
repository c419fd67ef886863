// Package testenv starts the real components that lazypull's tests run
// against (docker-registry, containerd, our daemon), builds test images and
// cleans up after them. It is for tests and the demo only; nothing in the
// product imports it.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// InCI tells whether the tests run in CI, where a missing component is a
// failure rather than a reason to skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Need stops the test when what it needs is missing: in CI it fails, so
// that nothing is silently untested; elsewhere it skips with the reason.
func Need(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if InCI() {
		t.Fatalf("this test needs %s: %v (run `make test`, which installs it)", what, err)
	}
	t.Skipf("skipping: this test needs %s: %v", what, err)
}

// NeedRoot stops the test unless it runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	var err error
	if os.Geteuid() != 0 {
		err = errNotRoot
	}
	Need(t, "root", err)
}

// NeedBinary returns the path of a program the test needs.
func NeedBinary(t testing.TB, name string) string {
	t.Helper()
	path, err := lookPath(name)
	Need(t, name, err)
	return path
}

type testenvError string

func (e testenvError) Error() string { return string(e) }

const errNotRoot = testenvError("not running as root (uid 0)")

// debianPackage names the package that provides each program we start.
var debianPackage = map[string]string{
	"docker-registry": "docker-registry",
	"containerd":      "containerd",
	"ctr":             "containerd",
	"runc":            "runc",
	"skopeo":          "skopeo",
	"fusermount3":     "fuse3",
	"java":            "default-jre-headless",
	"fsck.erofs":      "erofs-utils",
	"dump.erofs":      "erofs-utils",
	"mkfs.erofs":      "erofs-utils",
	"fsverity":        "fsverity",
	"rootlesskit":     "rootlesskit",
	"newuidmap":       "uidmap",
	"systemd-analyze": "systemd",
}

// lookPath finds a program, or says how to install it.
func lookPath(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		pkg := debianPackage[name]
		if pkg == "" {
			pkg = name
		}
		return "", &missingError{program: name, err: fmt.Errorf("%s not found on PATH: install it with `apt-get install -y %s` (make test does)", name, pkg)}
	}
	return path, nil
}

// missingError is a program the environment needs that is not installed:
// a reason for a test to skip (outside CI) rather than fail.
type missingError struct {
	program string
	err     error
}

func (e *missingError) Error() string { return e.err.Error() }

// NeedFUSE stops the test unless it can mount FUSE filesystems: root and
// /dev/fuse.
func NeedFUSE(t testing.TB) {
	t.Helper()
	NeedRoot(t)
	_, err := os.Stat("/dev/fuse")
	Need(t, "/dev/fuse", err)
}
