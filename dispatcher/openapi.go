package dispatcher

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"slices"

	"go.yaml.in/yaml/v3"
)

// openAPIFiles are openapi.yaml and its fragments openapi_<feature>.yaml:
// a fragment holds `paths:` and `components:` of one feature's routes, so
// that each feature documents its own routes in its own file.
//
//go:embed openapi*.yaml
var openAPIFiles embed.FS

// OpenAPI is the HTTP API's OpenAPI 3.1 description, served at
// GET /v1/openapi.yaml: openapi.yaml with every fragment merged in (see
// BuildOpenAPI). If a fragment cannot be merged it is openapi.yaml alone,
// and TestOpenAPIMatchesRoutes says why.
var OpenAPI = func() []byte {
	doc, err := BuildOpenAPI()
	if err != nil {
		doc, _ = openAPIFiles.ReadFile("openapi.yaml")
	}
	return doc
}()

// BuildOpenAPI merges the fragments openapi_*.yaml into openapi.yaml: their
// paths (a path in two files merges its operations), and their components
// by kind and name. The same operation or component named twice is an
// error.
func BuildOpenAPI() ([]byte, error) {
	base, err := openAPIFiles.ReadFile("openapi.yaml")
	if err != nil {
		return nil, err
	}
	names, err := fs.Glob(openAPIFiles, "openapi_*.yaml")
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	frags := map[string][]byte{}
	for _, name := range names {
		if frags[name], err = openAPIFiles.ReadFile(name); err != nil {
			return nil, err
		}
	}
	return MergeOpenAPI(base, frags)
}

// MergeOpenAPI merges fragments (file name -> YAML, taken in name order)
// into the OpenAPI document base, as BuildOpenAPI does.
func MergeOpenAPI(baseYAML []byte, fragments map[string][]byte) ([]byte, error) {
	base, err := parseYAML("openapi.yaml", baseYAML)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(fragments))
	for name := range fragments {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		frag, err := parseYAML(name, fragments[name])
		if err != nil {
			return nil, err
		}
		for _, key := range []string{"paths", "components"} {
			from := mapValue(frag, key)
			if from == nil {
				continue
			}
			into := mapValue(base, key)
			if into == nil {
				base.Content = append(base.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, &yaml.Node{Kind: yaml.MappingNode})
				into = base.Content[len(base.Content)-1]
			}
			// paths: path -> operations; components: kind -> names.
			if err := mergeTwoLevels(into, from, name+": "+key); err != nil {
				return nil, err
			}
		}
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{base}}); err != nil {
		return nil, fmt.Errorf("dispatcher: openapi: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("dispatcher: openapi: %w", err)
	}
	return out.Bytes(), nil
}

func parseYAML(name string, data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("dispatcher: %s: %w", name, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("dispatcher: %s is not a YAML mapping", name)
	}
	return doc.Content[0], nil
}

// mapValue returns the value of key in mapping m, or nil.
func mapValue(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// mergeTwoLevels adds from's entries to into, one level down: an outer key
// in both has its inner entries added; an inner key in both is an error.
func mergeTwoLevels(into, from *yaml.Node, where string) error {
	if into.Kind != yaml.MappingNode || from.Kind != yaml.MappingNode {
		return fmt.Errorf("dispatcher: openapi %s is not a mapping", where)
	}
	for i := 0; i+1 < len(from.Content); i += 2 {
		k, v := from.Content[i], from.Content[i+1]
		have := mapValue(into, k.Value)
		if have == nil {
			into.Content = append(into.Content, k, v)
			continue
		}
		if have.Kind != yaml.MappingNode || v.Kind != yaml.MappingNode {
			return fmt.Errorf("dispatcher: openapi %s: %s is not a mapping", where, k.Value)
		}
		for j := 0; j+1 < len(v.Content); j += 2 {
			if mapValue(have, v.Content[j].Value) != nil {
				return fmt.Errorf("dispatcher: openapi %s: %s %s is described twice", where, k.Value, v.Content[j].Value)
			}
			have.Content = append(have.Content, v.Content[j], v.Content[j+1])
		}
	}
	return nil
}
