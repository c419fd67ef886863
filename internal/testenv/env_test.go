package testenv

import "testing"

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/tmp/a\040b\134c\012`); got != "/tmp/a b\\c\n" {
		t.Errorf("got %q", got)
	}
}
