package converter

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// NoCloudLabel is the volume label cloud-init looks for.
const NoCloudLabel = "cidata"

// NoCloudSecrets is what the Secrets of a VMI's NoCloud disk hold, as the
// launcher read them from its pod.
type NoCloudSecrets struct {
	// UserData and NetworkData come from userDataSecretRef and
	// networkDataSecretRef ("" when not given).
	UserData, NetworkData string
	// AuthorizedKeys are the SSH public keys of spec.accessCredentials.
	AuthorizedKeys []string
}

// NoCloudFiles are the files of the VMI's NoCloud disk: meta-data (with
// the instance id and hostname), user-data (with the access credentials'
// keys added) and, when given, network-config.
func NoCloudFiles(vmi *v1.VirtualMachineInstance, src *v1.CloudInitNoCloudSource, sec NoCloudSecrets) (map[string][]byte, error) {
	userData, networkData := src.UserData, src.NetworkData
	if src.UserDataSecretRef != nil {
		userData = sec.UserData
	}
	if src.NetworkDataSecretRef != nil {
		networkData = sec.NetworkData
	}
	userData, err := withAuthorizedKeys(userData, sec.AuthorizedKeys)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"meta-data": []byte(fmt.Sprintf("instance-id: %s\nlocal-hostname: %s\n", vmi.UID, vmi.Name)),
		"user-data": []byte(userData),
	}
	if networkData != "" {
		files["network-config"] = []byte(networkData)
	}
	return files, nil
}

const cloudConfigHeader = "#cloud-config"

// withAuthorizedKeys adds keys to the ssh_authorized_keys of the
// #cloud-config userData (made when empty), leaving the rest as written.
func withAuthorizedKeys(userData string, keys []string) (string, error) {
	if len(keys) == 0 {
		return userData, nil
	}
	if strings.TrimSpace(userData) == "" {
		userData = cloudConfigHeader + "\n"
	}
	if first, _, _ := strings.Cut(userData, "\n"); strings.TrimSpace(first) != cloudConfigHeader {
		return "", fmt.Errorf("accessCredentials: the SSH keys go into #cloud-config user-data, and this user-data starts with %q: "+
			"write it as #cloud-config, or put the keys into it yourself and drop accessCredentials", first)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(userData), &doc); err != nil {
		return "", fmt.Errorf("accessCredentials: user-data is not valid YAML: %w", err)
	}
	if doc.Kind == 0 { // only the header comment
		doc = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode}}}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return "", fmt.Errorf("accessCredentials: #cloud-config user-data must be a YAML mapping (key: value lines)")
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		if root.Content[i].Value == "ssh_authorized_keys" {
			list = root.Content[i+1]
		}
	}
	if list == nil {
		list = &yaml.Node{Kind: yaml.SequenceNode}
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "ssh_authorized_keys"}, list)
	}
	if list.Kind != yaml.SequenceNode {
		return "", fmt.Errorf("accessCredentials: ssh_authorized_keys in the user-data must be a list")
	}
	have := map[string]bool{}
	for _, k := range list.Content {
		have[k.Value] = true
	}
	for _, k := range keys {
		if !have[k] {
			list.Content = append(list.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k})
			have[k] = true
		}
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return "", fmt.Errorf("accessCredentials: write user-data: %w", err)
	}
	if !strings.HasPrefix(string(out), cloudConfigHeader) {
		out = append([]byte(cloudConfigHeader+"\n"), out...)
	}
	return string(out), nil
}

// WriteNoCloudISO writes files as an ISO 9660 image labelled cidata at
// path: one root directory, no extensions (Linux shows the names in lower
// case, as cloud-init reads them).
func WriteNoCloudISO(path string, files map[string][]byte) error {
	return os.WriteFile(path, buildISO(NoCloudLabel, files), 0o444)
}

const isoSector = 2048

// buildISO lays out: system area (16 sectors), primary volume descriptor,
// terminator, little- and big-endian path tables, root directory, files.
func buildISO(label string, files map[string][]byte) []byte {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	const pvdLBA, termLBA, lPathLBA, mPathLBA, rootLBA = 16, 17, 18, 19, 20
	lba := uint32(rootLBA + 1)
	extents := make([]uint32, len(names))
	for i, n := range names {
		extents[i] = lba
		lba += uint32((len(files[n]) + isoSector - 1) / isoSector)
		if len(files[n]) == 0 {
			lba++ // keep every file its own sector
		}
	}
	total := lba
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC) // reproducible images

	var root bytes.Buffer
	root.Write(dirRecord(rootLBA, isoSector, true, []byte{0}, now))
	root.Write(dirRecord(rootLBA, isoSector, true, []byte{1}, now))
	for i, n := range names {
		id := strings.ToUpper(n) + ";1"
		root.Write(dirRecord(extents[i], uint32(len(files[n])), false, []byte(id), now))
	}

	img := make([]byte, int(total)*isoSector)
	pvd := img[pvdLBA*isoSector:]
	pvd[0] = 1
	copy(pvd[1:6], "CD001")
	pvd[6] = 1
	copy(pvd[8:40], pad("", 32))
	copy(pvd[40:72], pad(label, 32)) // lower case, as genisoimage -V cidata writes it
	both32(pvd[80:], total)
	both16(pvd[120:], 1)
	both16(pvd[124:], 1)
	both16(pvd[128:], isoSector)
	pathTable := []byte{1, 0, 0, 0, 0, 0, 1, 0, 0, 0} // root: len 1, extent, parent 1, name \0, pad
	both32(pvd[132:], uint32(len(pathTable)))
	binary.LittleEndian.PutUint32(pvd[140:], lPathLBA)
	binary.BigEndian.PutUint32(pvd[148:], mPathLBA)
	copy(pvd[156:190], dirRecord(rootLBA, isoSector, true, []byte{0}, now))
	for _, f := range [][2]int{{190, 128}, {318, 128}, {446, 128}, {574, 128}, {702, 37}, {739, 37}, {776, 37}} {
		copy(pvd[f[0]:f[0]+f[1]], pad("", f[1]))
	}
	for _, off := range []int{813, 830, 847, 864} {
		copy(pvd[off:off+16], "0000000000000000")
	}
	copy(pvd[813:], now.Format("2006010215040500"))
	copy(pvd[830:], now.Format("2006010215040500"))
	pvd[881] = 1

	term := img[termLBA*isoSector:]
	term[0] = 255
	copy(term[1:6], "CD001")
	term[6] = 1

	lpt := img[lPathLBA*isoSector:]
	copy(lpt, pathTable)
	binary.LittleEndian.PutUint32(lpt[2:], rootLBA)
	mpt := img[mPathLBA*isoSector:]
	copy(mpt, pathTable)
	binary.BigEndian.PutUint32(mpt[2:], rootLBA)
	binary.BigEndian.PutUint16(mpt[6:], 1)

	copy(img[rootLBA*isoSector:], root.Bytes())
	for i, n := range names {
		copy(img[int(extents[i])*isoSector:], files[n])
	}
	return img
}

func dirRecord(extent, size uint32, dir bool, id []byte, t time.Time) []byte {
	n := 33 + len(id)
	if n%2 == 1 {
		n++
	}
	r := make([]byte, n)
	r[0] = byte(n)
	both32(r[2:], extent)
	both32(r[10:], size)
	r[18] = byte(t.Year() - 1900)
	r[19] = byte(t.Month())
	r[20] = byte(t.Day())
	r[21] = byte(t.Hour())
	r[22] = byte(t.Minute())
	r[23] = byte(t.Second())
	if dir {
		r[25] = 2
	}
	both16(r[28:], 1)
	r[32] = byte(len(id))
	copy(r[33:], id)
	return r
}

func both32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b, v)
	binary.BigEndian.PutUint32(b[4:], v)
}

func both16(b []byte, v uint16) {
	binary.LittleEndian.PutUint16(b, v)
	binary.BigEndian.PutUint16(b[2:], v)
}

func pad(s string, n int) string {
	return s + strings.Repeat(" ", n-len(s))
}
