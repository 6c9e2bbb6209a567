package gatewayconfig

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	schemacel "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apivalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

// crd is one version of a CustomResourceDefinition's schema, applied to
// an object as the API server applies it on create: unknown fields
// refused (fieldValidation=Strict), defaults set, then the OpenAPI schema
// and the CEL rules checked.
type crd struct {
	kind       string
	structural *structuralschema.Structural
	schema     apivalidation.SchemaValidator
	rules      *schemacel.Validator
}

func loadCRD(t *testing.T, path, version string) *crd {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var def apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(b, &def); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, v := range def.Spec.Versions {
		if v.Name != version || !v.Served {
			continue
		}
		var props apiextensions.JSONSchemaProps
		if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(v.Schema.OpenAPIV3Schema, &props, nil); err != nil {
			t.Fatal(err)
		}
		s, err := structuralschema.NewStructural(&props)
		if err != nil {
			t.Fatal(err)
		}
		sv, _, err := apivalidation.NewSchemaValidator(&props)
		if err != nil {
			t.Fatal(err)
		}
		return &crd{kind: def.Spec.Names.Kind, structural: s, schema: sv, rules: schemacel.NewValidator(s, true, celconfig.PerCallLimit)}
	}
	t.Fatalf("%s serves no version %s", path, version)
	return nil
}

// validate reports what the API server would refuse in the YAML object.
func (c *crd) validate(body []byte) []string {
	js, err := yaml.YAMLToJSON(body)
	if err != nil {
		return []string{err.Error()}
	}
	var obj map[string]any
	// As the API server decodes: whole numbers as int64, which the
	// schema's integers require.
	if err := utiljson.Unmarshal(js, &obj); err != nil {
		return []string{err.Error()}
	}
	var problems []string
	for _, p := range pruning.PruneWithOptions(obj, c.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true}) {
		problems = append(problems, "unknown field "+p)
	}
	defaulting.Default(obj, c.structural)
	for _, e := range apivalidation.ValidateCustomResource(nil, obj, c.schema) {
		problems = append(problems, e.Error())
	}
	errs, _ := c.rules.Validate(context.Background(), nil, c.structural, obj, nil, celconfig.RuntimeCELCostBudget)
	for _, e := range errs {
		problems = append(problems, e.Error())
	}
	return problems
}

// gatewayAPICRDs are the CRDs of the Gateway API release go.mod requires,
// read from its module: the published schemas of the Go types the test
// decodes into, CEL rules included, in both channels.
var gatewayAPICRDs = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/gateway-api").Output()
	if err != nil {
		return "", err
	}
	return filepath.Join(strings.TrimSpace(string(out)), "config", "crd"), nil
})

func (c *checker) gatewayAPICRD(t *testing.T, channel, plural string) *crd {
	t.Helper()
	dir, err := gatewayAPICRDs()
	if err != nil {
		t.Fatalf("the Gateway API module: %v", err)
	}
	return c.crd(t, filepath.Join(dir, channel, "gateway.networking.k8s.io_"+plural+".yaml"), "v1")
}

// crd loads a CRD's version once: compiling its CEL rules is the test's
// slowest step.
func (c *checker) crd(t *testing.T, path, version string) *crd {
	t.Helper()
	k := path + "@" + version
	if c.crds[k] == nil {
		if c.crds == nil {
			c.crds = map[string]*crd{}
		}
		c.crds[k] = loadCRD(t, path, version)
	}
	return c.crds[k]
}
