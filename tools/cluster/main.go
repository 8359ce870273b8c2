// Command ido-k8s is a multi-call binary holding a small local Kubernetes
// control plane for tests: embedded etcd, kube-apiserver,
// kube-controller-manager and kubectl, all linked from the upstream Go
// modules, plus `up`/`down`/`restart` to run them as detached processes.
//
// The component is chosen by the basename of argv[0] (so a symlink named
// kubectl behaves as kubectl) or else by the first argument:
//
//	ido-k8s up DIR [--helm PATH] [--kubectl PATH] [--timeout 90s]
//	ido-k8s down DIR
//	ido-k8s restart DIR COMPONENT
//	ido-k8s etcd|kube-apiserver|kube-controller-manager|kubectl [ARGS...]
package main

import (
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"

	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl auth plugins
)

// components maps a name to its entry point. Each one reads its arguments
// from os.Args[1:], exactly like the upstream binary of that name.
var components = map[string]func() int{
	"etcd":                    runEtcd,
	"kube-apiserver":          func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int { return cli.Run(controllermanager.NewControllerManagerCommand()) },
	"kubectl":                 runKubectl,
}

// commands manage a whole cluster (see up.go).
var commands = map[string]func() int{"up": runUp, "down": runDown, "restart": runRestart}

func main() {
	// Called through a symlink named after a component (kubectl -> ido-k8s)?
	if run, ok := components[filepath.Base(os.Args[0])]; ok {
		os.Exit(run())
	}
	if len(os.Args) < 2 || (components[os.Args[1]] == nil && commands[os.Args[1]] == nil) {
		fmt.Fprintln(os.Stderr, "usage: ido-k8s up DIR | down DIR | restart DIR COMPONENT |"+
			" etcd|kube-apiserver|kube-controller-manager|kubectl [ARGS...]")
		os.Exit(2)
	}
	// "ido-k8s kubectl get ns" runs as if it were "kubectl get ns": cobra
	// and kubectl's plugin lookup both read os.Args.
	name := os.Args[1]
	os.Args = append([]string{name}, os.Args[2:]...)
	if run, ok := components[name]; ok {
		os.Exit(run())
	}
	os.Exit(commands[name]())
}

// runKubectl mirrors k8s.io/kubernetes/cmd/kubectl/kubectl.go.
func runKubectl() int {
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
	if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
		kubectlutil.CheckErr(err) // prints the error and exits non-zero
	}
	return 0
}
