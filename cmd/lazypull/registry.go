package main

import (
	"github.com/urfave/cli/v2"

	"github.com/lazypull/lazypull/remote"
)

// registryFlags are the flags of every command that talks to registries.
var registryFlags = []cli.Flag{
	&cli.BoolFlag{Name: "plain-http", Usage: "talk HTTP, not HTTPS, to registries (loopback registries get HTTP anyway)"},
	&cli.StringFlag{Name: "hosts-dir", Value: remote.DefaultHostsDir, Usage: "`DIR` of containerd-style HOST/hosts.toml files (mirrors, TLS)"},
}

func registryOptions(c *cli.Context) remote.Options {
	return remote.Options{PlainHTTP: c.Bool("plain-http"), HostsDir: c.String("hosts-dir")}
}
