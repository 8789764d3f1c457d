// Package contracts is the home of what two podvirt components share:
// names and file formats one writes and another reads. Each subpackage
// imports the standard library and third-party code only, never a podvirt
// component, so both sides can depend on it without linking each other:
//
//   - podlink: the launcher pod's link names (Multus interface, tap, in-pod
//     bridge) — controller, podvirt-l2, handler and launcher;
//   - diskmeta: a disk.podvirt.io volume's metadata file and disk formats —
//     the CSI driver writes it, the launcher reads it;
//   - cniresults: podvirt-l2's saved ADD results — the plugin writes them,
//     the node daemon reads them;
//   - launchercmd: the handler–launcher command protocol on the launcher's
//     unix socket;
//   - upload: image-upload's claim annotations, upload pod and resumable
//     protocol — podvirtctl, the controller and the CSI driver.
package contracts
