package mounter

import (
	"testing"

	"go.uber.org/goleak"
)

// Nothing the mounter starts (preopens, hints, layers, FUSE servers)
// outlives its Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Started once per process by the libraries, not by us.
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"))
}
