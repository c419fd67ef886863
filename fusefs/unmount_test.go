package fusefs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/lazypull/lazypull/internal/testenv"
)

// A layer a process still holds open is detached, not waited for: Unmount
// returns, the mountpoint is gone, and the holder still reads its file.
func TestUnmountWhileBusy(t *testing.T) {
	data := random(3 << 20)
	mnt, m, _ := mountLayer(t, []entry{reg("f", data, 0o644)}, Options{})
	f, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := m.Unmount(); err != nil {
		t.Fatalf("Unmount of a busy layer: %v", err)
	}
	if left := testenv.MountsUnder(mnt); len(left) > 0 {
		t.Errorf("still mounted after Unmount: %v", left)
	}
	got := make([]byte, len(data))
	if n, err := f.ReadAt(got, 0); n != len(data) || string(got) != string(data) {
		t.Errorf("the holder of a detached layer read %d bytes (%v), or wrong ones", n, err)
	}
}
