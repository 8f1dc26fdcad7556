// Command etcd is etcd's own server entry point (the same etcdmain.Main that
// go.etcd.io/etcd's etcd binary calls), built at the version Kubernetes pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
