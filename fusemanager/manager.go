// Package fusemanager keeps lazily mounted layers alive across restarts of
// the snapshotter daemon. A FUSE mount dies with the process that serves
// it, so the layers are served by a separate, long-lived process — the FUSE
// manager — much as containerd's shims keep containers alive while
// containerd restarts. The daemon asks it over a unix socket to mount and
// unmount layers; after a crash the daemon starts again, finds the manager
// still serving and carries on, and running containers never notice.
//
// The other way round, the daemon watches the manager: when it dies, the
// daemon starts a new one and has it mount every lazy layer again
// (Client.Supervise). Containers started afterwards work; running ones
// lose their lazy layers (ENOTCONN), because the FUSE sessions died with
// the process that held them.
//
// The manager runs the mounter; this package knows the protocol and the
// process, not how layers are fetched.
package fusemanager

import (
	"path/filepath"
	"time"
)

// Files in the daemon's root.
const (
	socketName  = "fusemanager.sock"
	lockName    = "fusemanager.lock" // held by the running manager; holds its pid
	logName     = "fusemanager.log"
	objectsName = "objfs" // the lazy composefs mode's object filesystem
)

// Subcommand is the argument that makes the daemon's binary a manager.
const Subcommand = "fuse-manager"

// SocketPath is where the manager for root listens.
func SocketPath(root string) string { return filepath.Join(root, socketName) }

// PIDPath holds the running manager's pid.
func PIDPath(root string) string { return filepath.Join(root, lockName) }

// ObjectsPath is where the manager for root mounts the object filesystem
// of the lazy composefs mode.
func ObjectsPath(root string) string { return filepath.Join(root, objectsName) }

// MountArgs asks for a layer to be mounted.
type MountArgs struct {
	Mountpoint string
	Labels     map[string]string
	// Image, if set, asks for the layer in the lazy composefs form: its
	// metadata image written there, its objects claimed by Owner and
	// served by the object filesystem (Mounter.MountComposefs).
	Image string
	Owner string
	// Timeout bounds the work in the manager: the caller has given up
	// by then (net/rpc carries no deadline of its own).
	Timeout time.Duration
}

// UnmountArgs asks for a mountpoint to be released.
type UnmountArgs struct {
	Mountpoint string
	Timeout    time.Duration
}

// CheckArgs asks whether layers may still be used (snapshot.Checker).
type CheckArgs struct {
	Mountpoints []string
	Timeout     time.Duration
}

// Empty is the reply of calls that return nothing but an error.
type Empty struct{}

// LayerStatus describes one mounted layer.
type LayerStatus struct {
	Mountpoint    string
	Digest        string
	Size          int64
	DataSize      int64
	FetchedBytes  int64
	CachedBytes   int64
	Requests      int64
	ChunksFetched int64
	Errors        int64
	LastError     string
	Verification  string // where the check against the image stands
	ProfiledBytes int64  // asked for by workload profiles
}

// StatusReply lists the mounted layers.
type StatusReply struct {
	PID    int
	Layers []LayerStatus
	// PassthroughNote says whether cached files are handed to the kernel
	// (FUSE passthrough), and why.
	PassthroughNote string
}
