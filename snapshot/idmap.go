package snapshot

import (
	"fmt"
	"strconv"
	"strings"
)

// hostRootID returns the host id that container id 0 maps to in a
// containerd id-mapping label ("containerID:hostID:size[,...]").
func hostRootID(label string) (int, error) {
	for _, r := range strings.Split(label, ",") {
		parts := strings.Split(r, ":")
		if len(parts) != 3 {
			return -1, fmt.Errorf("id mapping %q: range %q is not containerID:hostID:size", label, r)
		}
		var n [3]uint32
		for i, p := range parts {
			v, err := strconv.ParseUint(p, 10, 32)
			if err != nil {
				return -1, fmt.Errorf("id mapping %q: %q is not a number: %w", label, p, err)
			}
			n[i] = uint32(v)
		}
		containerID, hostID, size := n[0], n[1], n[2]
		if size == 0 {
			return -1, fmt.Errorf("id mapping %q: range %q is empty", label, r)
		}
		if containerID == 0 {
			return int(hostID), nil
		}
	}
	return -1, fmt.Errorf("id mapping %q does not map container id 0", label)
}
