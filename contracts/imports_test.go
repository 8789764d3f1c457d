package contracts

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/podvirt/podvirt/"

// TestImportNoComponent: a contract imports the standard library,
// third-party code, the API types and other contracts — never a podvirt
// component, so both sides of a contract can import it without linking
// each other.
func TestImportNoComponent(t *testing.T) {
	fset := token.NewFileSet()
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			rest, ours := strings.CutPrefix(p, module)
			if !ours || strings.HasPrefix(rest, "contracts/") || rest == "api/v1alpha1" {
				continue
			}
			t.Errorf("%s imports %s: a contract may import only the API types and other contracts", path, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
