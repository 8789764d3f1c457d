package launcher

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/runtime/converter"
)

// maxSecretValue bounds what one Secret key may make us read: the API's
// own bound on cloud-init data.
const maxSecretValue = 64 << 10

// readNoCloudSecrets reads what the Secrets of the VMI's NoCloud disk hold
// from where the controller mounted them under dir (v1.SecretDir in the
// pod).
func readNoCloudSecrets(vmi *v1.VirtualMachineInstance, src *v1.CloudInitNoCloudSource, dir string) (converter.NoCloudSecrets, error) {
	var sec converter.NoCloudSecrets
	var err error
	if ref := src.UserDataSecretRef; ref != nil {
		if sec.UserData, err = readSecretKey(filepath.Join(dir, v1.CloudInitSecretMount(v1.CloudInitUserData)), ref.Name, v1.CloudInitUserData, "userData"); err != nil {
			return sec, err
		}
	}
	if ref := src.NetworkDataSecretRef; ref != nil {
		if sec.NetworkData, err = readSecretKey(filepath.Join(dir, v1.CloudInitSecretMount(v1.CloudInitNetworkData)), ref.Name, v1.CloudInitNetworkData, "networkData"); err != nil {
			return sec, err
		}
	}
	for i, ac := range vmi.Spec.AccessCredentials {
		key := ac.SSHPublicKey
		if key == nil || key.Source.Secret == nil || key.PropagationMethod.NoCloud == nil {
			continue
		}
		keys, err := readAuthorizedKeys(filepath.Join(dir, v1.AccessCredentialMount(i)), key.Source.Secret.SecretName)
		if err != nil {
			return sec, err
		}
		sec.AuthorizedKeys = append(sec.AuthorizedKeys, keys...)
	}
	return sec, nil
}

// readSecretKey reads the first of keys present in the Secret mounted at dir.
func readSecretKey(dir, secret string, keys ...string) (string, error) {
	for _, k := range keys {
		b, err := readBounded(filepath.Join(dir, k), secret, k)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		return string(b), err
	}
	return "", fmt.Errorf("secret %s has no key %s: put the data under that key", secret, strings.Join(keys, " or "))
}

// readAuthorizedKeys reads the public keys of every key of the Secret
// mounted at dir, one per line; blank lines and comments are skipped.
func readAuthorizedKeys(dir, secret string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("access credential secret %s: %w", secret, err)
	}
	var keys []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") { // the kubelet's ..data links
			continue
		}
		b, err := readBounded(filepath.Join(dir, e.Name()), secret, e.Name())
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
				keys = append(keys, line)
			}
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("access credential secret %s holds no SSH public key: put one per line under any key", secret)
	}
	return keys, nil
}

func readBounded(path, secret, key string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretValue+1))
	if err != nil {
		return nil, fmt.Errorf("secret %s key %s: %w", secret, key, err)
	}
	if len(b) > maxSecretValue {
		return nil, fmt.Errorf("secret %s key %s is larger than %d KiB: cloud-init data and keys must be smaller", secret, key, maxSecretValue>>10)
	}
	return b, nil
}
