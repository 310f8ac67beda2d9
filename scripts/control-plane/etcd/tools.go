//go:build tools

// The binary this module builds; the build tag keeps it out of any ordinary build.
package etcd

import _ "go.etcd.io/etcd/server/v3"
