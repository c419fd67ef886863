// Package interop holds no code: its tests check lazypull's layer formats
// against the implementations that define them, stargz-snapshotter's
// estargz module and containers/storage, in both directions: what they
// write, lazypull reads, and what lazypull writes, they read (and pull
// lazily, or partially). The tests use only the exported API of lazypull's
// format packages and of the reference modules.
package interop
