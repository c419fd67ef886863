package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoDaemonInTheCLI: the CLI does not link the daemon (package service)
// or its Kubernetes client: their package initialisation added some 20 ms
// to the start of every command, `lazypull pull` on a container's path
// included.
func TestNoDaemonInTheCLI(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "github.com/lazypull/lazypull/service" || strings.HasPrefix(pkg, "k8s.io/client-go") {
			t.Errorf("the lazypull command imports %s", pkg)
		}
	}
}
