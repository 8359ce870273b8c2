// Command govc: govmomi's CLI (github.com/vmware/govmomi/cli) with the command packages the
// vSphere benchmark uses: about, import.* (importx, the original operator's path), ls/find
// and the vm.* commands.
package main

import (
	"os"

	"github.com/vmware/govmomi/cli"

	_ "github.com/vmware/govmomi/cli/about"
	_ "github.com/vmware/govmomi/cli/importx"
	_ "github.com/vmware/govmomi/cli/object"
	_ "github.com/vmware/govmomi/cli/vm"
)

func main() {
	os.Exit(cli.Run(os.Args[1:]))
}
