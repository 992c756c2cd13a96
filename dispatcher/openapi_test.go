package dispatcher_test

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/procfleet/procfleet/dispatcher"
)

// handlerCodes is every status each route's handler can answer, beyond the
// 401/403 of the token guard (added for every route but /healthz). Keep it
// next to the handlers' writeError/fail calls: a new code in a handler goes
// here and in openapi.yaml.
var handlerCodes = map[string][]int{
	"GET /healthz":                {200, 503},
	"GET /v1/openapi.yaml":        {200},
	"POST /v1/jobs":               {200, 400, 409, 413, 500, 501, 503},
	"POST /v1/jobs/batch":         {200, 400, 413},
	"GET /v1/jobs/{id}/progress":  {200, 400, 404, 500, 503},
	"GET /v1/results/{id}":        {200, 400, 404, 500, 503},
	"GET /v1/status":              {200, 500, 503},
	"GET /v1/agents":              {200, 500, 503},
	"GET /v1/queues":              {200, 500, 503},
	"GET /v1/dlq":                 {200, 400, 500, 503},
	"DELETE /v1/dlq":              {200, 400, 500, 503},
	"GET /v1/dlq/{seq}":           {200, 400, 404, 500, 503},
	"POST /v1/dlq/{seq}/replay":   {200, 400, 404, 409, 413, 500, 503},
	"POST /v1/dlq/replay":         {200, 400, 413},
	"GET /":                       {200, 401},
	"GET /ui/{file}":              {200, 401, 404},
	"POST /ui/login":              {200},
	"POST /ui/logout":             {204},
	"GET /v1/events":              {200, 400, 500, 503},
	"GET /v1/jobs/{id}":           {200, 400, 404, 500, 503},
	"GET /v1/failures":            {200, 400},
	"POST /v1/schedules":          {201, 400, 409, 413, 500, 501, 503},
	"GET /v1/schedules":           {200, 500, 503},
	"DELETE /v1/schedules/{name}": {204, 400, 404, 500, 503},
	"DELETE /v1/jobs/{id}":        {200, 202, 400, 500, 503},
}

// openRoutes need no token.
// The dashboard's page, its files and its logout authenticate with the
// page's own session cookie, not a bearer token.
var openRoutes = map[string]bool{"GET /healthz": true, "GET /": true, "GET /ui/{file}": true, "POST /ui/logout": true}

type openAPIDoc struct {
	OpenAPI string                                 `yaml:"openapi"`
	Paths   map[string]map[string]openAPIOperation `yaml:"paths"`
}

type openAPIOperation struct {
	Security  *[]map[string][]string `yaml:"security"`
	Responses map[string]any         `yaml:"responses"`
}

// documentedRoutes reads openapi.yaml into "METHOD /path" -> operation.
func documentedRoutes(t *testing.T) map[string]openAPIOperation {
	t.Helper()
	if _, err := dispatcher.BuildOpenAPI(); err != nil {
		t.Fatalf("openapi.yaml with its fragments: %v", err)
	}
	var doc openAPIDoc
	if err := yaml.Unmarshal(dispatcher.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Fatalf("openapi.yaml is OpenAPI %q, want 3.1.x", doc.OpenAPI)
	}
	out := map[string]openAPIOperation{}
	for path, ops := range doc.Paths {
		for method, op := range ops {
			switch method {
			case "get", "put", "post", "delete", "patch", "head", "options":
				// "/{$}" (the mux's exact "/") may be written either way.
				out[strings.ToUpper(method)+" "+strings.ReplaceAll(path, "{$}", "")] = op
			}
		}
	}
	return out
}

// TestOpenAPIMatchesRoutes holds openapi.yaml and the mux together (whoever
// adds a route to httpAPI.routes adds it to openapi.yaml and to handlerCodes
// here, and to TestHTTPRoutesNeedRights' rights): every served route is
// documented, every documented route is served, each
// documents exactly its handler's status codes (plus 401 and 403 where a
// token is needed), and only /healthz is documented as open.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	t.Parallel()
	// A pattern's "{$}" (the exact path, not its subtree) is no part of
	// the documented path.
	var served []string
	for _, p := range dispatcher.HTTPRoutes() {
		served = append(served, strings.ReplaceAll(p, "{$}", ""))
	}
	docs := documentedRoutes(t)
	for _, route := range served {
		op, ok := docs[route]
		if !ok {
			t.Errorf("route %s is served but not in openapi.yaml", route)
			continue
		}
		codes, ok := handlerCodes[route]
		if !ok {
			t.Errorf("route %s has no entry in handlerCodes (openapi_test.go)", route)
			continue
		}
		want := slices.Clone(codes)
		if !openRoutes[route] {
			want = append(want, 401, 403)
		}
		slices.Sort(want)
		var got []int
		for c := range op.Responses {
			n, err := strconv.Atoi(c)
			if err != nil {
				t.Errorf("%s: response %q is not a status code", route, c)
				continue
			}
			got = append(got, n)
		}
		sort.Ints(got)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: openapi.yaml documents %v, the handler answers %v", route, got, want)
		}
		open := op.Security != nil && len(*op.Security) == 0
		if open != openRoutes[route] {
			t.Errorf("%s: documented as open=%v, served open=%v", route, open, openRoutes[route])
		}
	}
	for route := range docs {
		if !slices.Contains(served, route) {
			t.Errorf("openapi.yaml documents %s, which is not served", route)
		}
	}
	for route := range handlerCodes {
		if !slices.Contains(served, route) {
			t.Errorf("handlerCodes lists %s, which is not served", route)
		}
	}
}

// TestOpenAPIRefsResolve: every $ref in openapi.yaml names a component that
// exists, and every component is used.
func TestOpenAPIRefsResolve(t *testing.T) {
	t.Parallel()
	var doc map[string]any
	if err := yaml.Unmarshal(dispatcher.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && k == "$ref" {
					used[s] = true
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	components, _ := doc["components"].(map[string]any)
	defined := map[string]bool{}
	for kind, group := range components {
		if kind == "securitySchemes" {
			continue // named by security requirements, not $ref
		}
		for name := range group.(map[string]any) {
			defined["#/components/"+kind+"/"+name] = true
		}
	}
	for ref := range used {
		if !defined[ref] {
			t.Errorf("$ref %s names no component", ref)
		}
	}
	for ref := range defined {
		if !used[ref] {
			t.Errorf("component %s is never used", ref)
		}
	}
}

// TestMergeOpenAPI: a fragment's paths and components join the document
// (a path in both gains the fragment's operations); an operation or a
// component described twice is an error naming it.
func TestMergeOpenAPI(t *testing.T) {
	t.Parallel()
	base := []byte(`openapi: 3.1.0
paths:
  /v1/jobs/{id}/progress:
    get: {operationId: progress}
components:
  schemas:
    Error: {type: object}
`)
	frag := []byte(`# a feature's routes
paths:
  /v1/jobs/{id}:
    delete: {operationId: cancel}
  /v1/jobs/{id}/progress:
    head: {operationId: progressHead}
components:
  schemas:
    CancelReply: {type: object}
  responses:
    Gone: {description: gone}
`)
	out, err := dispatcher.MergeOpenAPI(base, map[string][]byte{"openapi_cancel.yaml": frag})
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]struct {
			OperationID string `yaml:"operationId"`
		} `yaml:"paths"`
		Components map[string]map[string]any `yaml:"components"`
	}
	if err := yaml.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintln(doc.Paths["/v1/jobs/{id}"]["delete"].OperationID, doc.Paths["/v1/jobs/{id}/progress"]["get"].OperationID,
		doc.Paths["/v1/jobs/{id}/progress"]["head"].OperationID, len(doc.Components["schemas"]), len(doc.Components["responses"]))
	if got != "cancel progress progressHead 2 1\n" {
		t.Fatalf("merged: %s\n%s", got, out)
	}
	for name, bad := range map[string]string{
		"get progress":   "paths:\n  /v1/jobs/{id}/progress:\n    get: {operationId: again}\n",
		"schemas Error":  "components:\n  schemas:\n    Error: {type: string}\n",
		"openapi_x.yaml": "paths: [1, 2]\n",
		"not a YAML map": "- a list\n",
	} {
		_, err := dispatcher.MergeOpenAPI(base, map[string][]byte{"openapi_x.yaml": []byte(bad)})
		if err == nil || !strings.Contains(err.Error(), strings.Fields(name)[len(strings.Fields(name))-1]) {
			t.Errorf("fragment %q: err = %v, want one naming %q", bad, err, name)
		}
	}
}
