package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// RootlessUser is the unprivileged user a rootless Env runs containerd
// and our daemon as; WithRootless creates it if the machine lacks it (and
// removes it again), with subordinate ids for its user namespace.
const RootlessUser = "lazypull-rootless"

// Rootless runs containerd and our daemon as RootlessUser, as containerd's
// rootless recipe (nerdctl's containerd-rootless.sh) does: Debian's
// rootlesskit makes a user namespace from the user's subordinate ids
// (through uidmap's newuidmap) and a mount namespace in which containerd's
// fixed paths (/run/containerd, /var/lib/containerd) are the user's;
// containerd runs in them, and our daemon and ctr join them with nsenter,
// as `containerd-rootless-setuptool.sh nsenter` does. The network is the
// host's (--net=host), so that the Env's loopback registry is reachable.
type Rootless struct {
	UID, GID    int
	createdUser bool
	fuseMode    os.FileMode // /dev/fuse's mode before setUp, if it changed it
	stateDir    string      // rootlesskit's
	child       string      // the script rootlesskit runs containerd through
}

// WithRootless runs the Env rootless (see Rootless).
func WithRootless() Option {
	return func(e *Env) error {
		e.Rootless = &Rootless{}
		return nil
	}
}

// setUp makes the user and lets it use /dev/fuse and the Env's directory.
func (r *Rootless) setUp(e *Env) error {
	for _, prog := range []string{"rootlesskit", "newuidmap", "nsenter", "setpriv"} {
		if _, err := lookPath(prog); err != nil {
			return err
		}
	}
	u, err := user.Lookup(RootlessUser)
	if err != nil {
		// Subordinate ids from a range useradd would not pick.
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RootlessUser).CombinedOutput()
		if err != nil {
			return fmt.Errorf("useradd %s: %w: %s", RootlessUser, err, out)
		}
		r.createdUser = true
		if out, err := exec.Command("usermod", "--add-subuids", "1300000-1365535", "--add-subgids", "1300000-1365535", RootlessUser).CombinedOutput(); err != nil {
			return fmt.Errorf("usermod %s: %w: %s", RootlessUser, err, out)
		}
		if u, err = user.Lookup(RootlessUser); err != nil {
			return err
		}
	}
	r.UID, _ = strconv.Atoi(u.Uid)
	r.GID, _ = strconv.Atoi(u.Gid)
	// Debian's udev makes /dev/fuse 0666, for fusermount and rootless
	// FUSE; machines of this kind have it 0600.
	fi, err := os.Stat("/dev/fuse")
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o006 != 0o006 {
		r.fuseMode = fi.Mode().Perm()
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			return err
		}
	}
	r.stateDir = filepath.Join(e.Dir, "rootlesskit")
	// The user writes the daemon's root and containerd's; the registry
	// and our binaries stay root's.
	for _, dir := range []string{e.Dir, filepath.Join(e.Dir, "containerd")} {
		if err := os.Chown(dir, r.UID, r.GID); err != nil {
			return err
		}
	}
	r.child = filepath.Join(e.Dir, "rootless-child.sh")
	return os.WriteFile(r.child, []byte(rootlessChild), 0o755)
}

// rootlessChild runs in rootlesskit's namespaces: containerd's fixed
// paths become directories of the user's (beside its socket), then it
// runs its arguments (containerd).
const rootlessChild = `#!/bin/sh
set -e
dir=$(dirname "$0")/containerd
mkdir -p "$dir/run" "$dir/lib" /run/containerd /var/lib/containerd
mount --bind "$dir/run" /run/containerd
mount --bind "$dir/lib" /var/lib/containerd
exec "$@"
`

// asUser is the command prefix that runs a program as the user, in the
// host's namespaces.
func (r *Rootless) asUser() []string {
	return []string{"setpriv", "--reuid=" + strconv.Itoa(r.UID), "--regid=" + strconv.Itoa(r.GID), "--clear-groups", "--"}
}

// rootlesskit is the command prefix that runs containerd in the Env's
// rootless namespaces.
func (r *Rootless) rootlesskit() []string {
	return append(r.asUser(), "rootlesskit", "--state-dir="+r.stateDir, "--net=host",
		"--copy-up=/etc", "--copy-up=/run", "--copy-up=/var/lib", "--propagation=rslave", r.child)
}

// inside is the command prefix that runs a program as the user in the
// namespaces containerd runs in.
func (r *Rootless) inside() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(r.stateDir, "child_pid"))
	if err != nil {
		return nil, fmt.Errorf("rootlesskit's child: %w", err)
	}
	return append(r.asUser(), "nsenter", "-U", "--preserve-credentials", "-m", "-t", strings.TrimSpace(string(b)), "--"), nil
}

// Command runs name with args as the user in the namespaces containerd
// runs in, as the Env's daemon runs.
func (r *Rootless) Command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	wrap, err := r.inside()
	if err != nil {
		return nil, err
	}
	argv := slices.Concat(wrap, []string{name}, args)
	return exec.CommandContext(ctx, argv[0], argv[1:]...), nil
}

// close puts /dev/fuse's mode back and removes the user if setUp made it.
func (r *Rootless) close() error {
	var errs []string
	if r.fuseMode != 0 {
		if err := os.Chmod("/dev/fuse", r.fuseMode); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if r.createdUser {
		if out, err := exec.Command("userdel", RootlessUser).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Sprintf("userdel %s: %v: %s", RootlessUser, err, out))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("rootless: %s", strings.Join(errs, "; "))
	}
	return nil
}
