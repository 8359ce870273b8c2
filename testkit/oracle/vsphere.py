#!/usr/bin/env python3
"""Independent vSphere oracle for ido's tests, built on pyVmomi (not on the project's client).

Credentials come as one JSON line on stdin, {"user": "...", "password": "..."}, never on the
command line or in the environment. The result is printed to stdout as JSON; errors go to
stderr with a non-zero exit status.

Usage:
  vsphere.py --url https://127.0.0.1:PORT/sdk (--insecure | --cafile CA.pem) list-vms --folder /DC0/vm
  vsphere.py --url ... find --path /DC0/vm/NAME

list-vms: the VMs directly in a folder (not recursive), each
  {"name", "moref", "type", "template", "powerState"}.
find: the object at an inventory path ({"name", "moref", "type"}, plus "template" and
  "powerState" for a VM), or null when nothing is there.
"""
import argparse
import json
import ssl
import sys
import urllib.parse

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim


def connect(args, creds):
    url = urllib.parse.urlparse(args.url)
    context = None
    if url.scheme == "https":
        if args.insecure:
            context = ssl._create_unverified_context()
        else:
            context = ssl.create_default_context(cafile=args.cafile)
    return SmartConnect(
        protocol=url.scheme,
        host=url.hostname,
        port=url.port or (443 if url.scheme == "https" else 80),
        path=url.path or "/sdk",
        user=creds["user"],
        pwd=creds["password"],
        sslContext=context,
    )


def describe(obj):
    out = {"name": obj.name, "moref": obj._moId, "type": obj._wsdlName}
    if isinstance(obj, vim.VirtualMachine):
        config = obj.config
        out["template"] = bool(config.template) if config is not None else None
        out["powerState"] = str(obj.runtime.powerState)
    return out


def list_vms(content, args):
    folder = content.searchIndex.FindByInventoryPath(args.folder)
    if folder is None:
        raise SystemExit(f"vsphere.py: folder {args.folder!r} not found")
    if not isinstance(folder, vim.Folder):
        raise SystemExit(f"vsphere.py: {args.folder!r} is a {folder._wsdlName}, not a Folder")
    return [describe(e) for e in folder.childEntity if isinstance(e, vim.VirtualMachine)]


def find(content, args):
    obj = content.searchIndex.FindByInventoryPath(args.path)
    return None if obj is None else describe(obj)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="SDK URL, e.g. https://127.0.0.1:8989/sdk")
    parser.add_argument("--insecure", action="store_true", help="skip TLS certificate checks")
    parser.add_argument("--cafile", help="CA certificate (PEM) to verify the server with")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list-vms", help="VMs directly in a folder")
    p.add_argument("--folder", required=True)
    p = sub.add_parser("find", help="the object at an inventory path, or null")
    p.add_argument("--path", required=True)
    args = parser.parse_args()

    line = sys.stdin.readline()
    try:
        creds = json.loads(line)
        creds["user"], creds["password"]
    except (ValueError, KeyError, TypeError):
        raise SystemExit('vsphere.py: expected {"user": ..., "password": ...} as one JSON line on stdin')

    si = connect(args, creds)
    try:
        content = si.RetrieveContent()
        result = {"list-vms": list_vms, "find": find}[args.command](content, args)
    finally:
        Disconnect(si)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
