package layer

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine a layer starts ends with Close: none outlives the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
