// Builds govc, the vSphere CLI, from the govmomi module: the original operator's import path
// (govc's importx package, import.ova) as a benchmark anchor. The module proxy serves govmomi
// without its nested govc main package, so main.go here is govc's main over the commands the
// benchmark uses.
module ido.dev/tools/govc

go 1.26.0

require github.com/vmware/govmomi v0.56.0

require (
	github.com/a8m/tree v0.0.0-20240104212747-2c8764a5f17e // indirect
	github.com/dougm/pretty v0.0.0-20160325215624-add1dbc86daf // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/kr/text v0.2.0 // indirect
	github.com/rogpeppe/go-internal v1.16.0 // indirect
	golang.org/x/text v0.41.0 // indirect
)
