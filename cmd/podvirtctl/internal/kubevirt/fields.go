package kubevirt

import (
	"fmt"
	"math"
	"sort"
	"strconv"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Finding is a field of the KubeVirt object that podvirt cannot take as
// written.
type Finding struct {
	// Path is where the field is in the KubeVirt object, e.g.
	// spec.template.spec.volumes[1].hostDisk.
	Path string
	// Why says why, and what to do instead.
	Why string
	// Blocking is set when no VM can be made without the field (a value
	// podvirt cannot take, no memory); otherwise the field is left out.
	Blocking bool
}

func (f Finding) String() string { return f.Path + ": " + f.Why }

// findings collects what one conversion could not map.
type findings []Finding

func (fs *findings) drop(path, why string) {
	*fs = append(*fs, Finding{Path: path, Why: why})
}

func (fs *findings) block(path, why string) {
	*fs = append(*fs, Finding{Path: path, Why: why, Blocking: true})
}

// fields is one object of the KubeVirt input as it is read: every key read
// is marked, and done reports the keys nobody read, so that a field the
// converter does not know is never lost without a word.
type fields struct {
	fs   *findings
	path string
	m    map[string]any
	read map[string]bool
}

// object reads v, found at path, as an object; a v of another type is a
// blocking finding and reads as empty.
func (fs *findings) object(path string, v any) *fields {
	m, ok := v.(map[string]any)
	if !ok && v != nil {
		fs.block(path, fmt.Sprintf("want an object, got %s", describe(v)))
	}
	return &fields{fs: fs, path: path, m: m, read: map[string]bool{}}
}

func (f *fields) at(key string) string {
	if f.path == "" {
		return key
	}
	return f.path + "." + key
}

func (f *fields) has(key string) bool {
	_, ok := f.m[key]
	return ok
}

func (f *fields) get(key string) (any, bool) {
	v, ok := f.m[key]
	if ok {
		f.read[key] = true
	}
	return v, ok && v != nil
}

// ignore marks keys read without mapping them: what the API server fills
// in (status, uid) and what means nothing once converted.
func (f *fields) ignore(keys ...string) {
	for _, k := range keys {
		f.read[k] = true
	}
}

// drop reports key, when present, as left out for why.
func (f *fields) drop(key, why string) {
	if f.has(key) {
		f.read[key] = true
		f.fs.drop(f.at(key), why)
	}
}

func (f *fields) object(key string) *fields {
	v, _ := f.get(key)
	return f.fs.object(f.at(key), v)
}

// list reads key as a list of objects.
func (f *fields) list(key string) []*fields {
	v, ok := f.get(key)
	if !ok {
		return nil
	}
	items, isList := v.([]any)
	if !isList {
		f.fs.block(f.at(key), fmt.Sprintf("want a list, got %s", describe(v)))
		return nil
	}
	var out []*fields
	for i, item := range items {
		out = append(out, f.fs.object(fmt.Sprintf("%s[%d]", f.at(key), i), item))
	}
	return out
}

func (f *fields) str(key string) string {
	v, ok := f.get(key)
	if !ok {
		return ""
	}
	s, isStr := v.(string)
	if !isStr {
		f.fs.block(f.at(key), fmt.Sprintf("want a string, got %s", describe(v)))
	}
	return s
}

func (f *fields) boolean(key string) *bool {
	v, ok := f.get(key)
	if !ok {
		return nil
	}
	b, isBool := v.(bool)
	if !isBool {
		f.fs.block(f.at(key), fmt.Sprintf("want true or false, got %s", describe(v)))
		return nil
	}
	return &b
}

// integer reads a whole number from min to max; ok is false when it is
// absent or out of range (a blocking finding).
func (f *fields) integer(key string, min, max int64) (n int64, ok bool) {
	v, present := f.get(key)
	if !present {
		return 0, false
	}
	x, isNum := v.(float64)
	switch {
	case !isNum || x != math.Trunc(x):
		f.fs.block(f.at(key), fmt.Sprintf("want a whole number, got %s", describe(v)))
	case x < float64(min) || x > float64(max):
		f.fs.block(f.at(key), fmt.Sprintf("%v is out of podvirt's range: %d to %d", x, min, max))
	default:
		return int64(x), true
	}
	return 0, false
}

// count reads a count from 1 to max; 0 when absent.
func (f *fields) count(key string, max uint32) uint32 {
	n, _ := f.integer(key, 1, int64(max))
	return uint32(n)
}

// quantity reads a resource quantity, written as a string ("1Gi") or a
// number of bytes.
func (f *fields) quantity(key string) *resource.Quantity {
	v, ok := f.get(key)
	if !ok {
		return nil
	}
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case float64:
		s = strconv.FormatFloat(v, 'f', -1, 64)
	default:
		f.fs.block(f.at(key), fmt.Sprintf("want a quantity such as 1Gi, got %s", describe(v)))
		return nil
	}
	q, err := resource.ParseQuantity(s)
	if err != nil {
		f.fs.block(f.at(key), fmt.Sprintf("%q is not a quantity such as 1Gi", s))
		return nil
	}
	return &q
}

// stringMap reads labels or annotations.
func (f *fields) stringMap(key string) map[string]string {
	v, ok := f.get(key)
	if !ok {
		return nil
	}
	m, isMap := v.(map[string]any)
	if !isMap {
		f.fs.block(f.at(key), fmt.Sprintf("want a map of strings, got %s", describe(v)))
		return nil
	}
	out := map[string]string{}
	for k, v := range m {
		s, isStr := v.(string)
		if !isStr {
			f.fs.block(f.at(key)+"."+k, fmt.Sprintf("want a string, got %s", describe(v)))
			continue
		}
		out[k] = s
	}
	return out
}

// done reports every key not read, in order, with why podvirt has no
// place for it (noEquivalent, or a generic reason).
func (f *fields) done() {
	var left []string
	for k := range f.m {
		if !f.read[k] {
			left = append(left, k)
		}
	}
	sort.Strings(left)
	for _, k := range left {
		why, ok := noEquivalent[k]
		if !ok {
			why = "podvirt's API has no such field"
		}
		f.fs.drop(f.at(k), why)
	}
}

func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("the string %q", v)
	case float64, bool:
		return fmt.Sprintf("%v", v)
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
