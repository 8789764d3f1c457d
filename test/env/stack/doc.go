// Package stack puts the whole product on a local cluster the way a user
// meets it — podvirt's images imported, the chart installed with helm, a
// registry pair holding the test guest, a StorageClass and a NAD, VMs — for
// `make demo` and the e2e suite.
package stack
