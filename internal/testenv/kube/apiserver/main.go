// Command kube-apiserver is Kubernetes' API server, built from its Go
// module for the tests that need a real one (scripts/build-kube.sh): the
// kubernetes module cannot be `go install`ed (its go.mod replaces its
// staging modules), so this module pins them instead.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() { os.Exit(cli.Run(app.NewAPIServerCommand())) }
