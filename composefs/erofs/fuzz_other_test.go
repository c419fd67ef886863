//go:build !linux

package erofs

import "testing"

// checkKernel: only Linux mounts EROFS.
func checkKernel(t *testing.T, imgPath string, entries []Entry) {}
