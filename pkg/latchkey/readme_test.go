package latchkey_test

import (
	"os"
	"path"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/pkg/latchkey"
)

// readmeYAML is each YAML block of the README's section under heading.
func readmeYAML(t *testing.T, heading string) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("the README has no %q", heading)
	}
	for _, next := range []string{"\n## ", "\n### "} {
		if end := strings.Index(section, next); end >= 0 {
			section = section[:end]
		}
	}
	var blocks []string
	for rest := section; ; {
		_, after, ok := strings.Cut(rest, "```yaml\n")
		if !ok {
			return blocks
		}
		block, tail, _ := strings.Cut(after, "```")
		blocks, rest = append(blocks, block), tail
	}
}

// The README's Deployment for rotating without downtime is one kubelet
// refreshes: the client is pointed at the key file of a Secret volume
// mounted as a directory (a subPath mount never refreshes), the Secret of
// the section's ApiKey.
func TestTheREADMEDeploymentFollowsRotations(t *testing.T) {
	keyDoc := readmeYAML(t, "### Rotation")
	if len(keyDoc) != 1 {
		t.Fatalf("### Rotation has %d YAML blocks, want the ApiKey", len(keyDoc))
	}
	var key authv1alpha1.ApiKey
	if err := yaml.UnmarshalStrict([]byte(keyDoc[0]), &key); err != nil {
		t.Fatalf("the ApiKey: %v", err)
	}
	if r := key.Spec.Rotation; r == nil || r.RequestedAt == nil || r.GracePeriod == nil || r.Every == nil {
		t.Fatalf("the ApiKey shows no full rotation: %+v", key.Spec.Rotation)
	}

	docs := readmeYAML(t, "### Rotating without downtime")
	if len(docs) != 1 {
		t.Fatalf("### Rotating without downtime has %d YAML blocks, want the Deployment", len(docs))
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &d); err != nil {
		t.Fatalf("the Deployment: %v", err)
	}
	if d.Namespace != key.Namespace {
		t.Fatalf("the Deployment is in %q, the ApiKey in %q", d.Namespace, key.Namespace)
	}
	volumes := map[string]string{} // volume → the file of the key in it
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret == nil || v.Secret.SecretName != key.SecretName() {
			continue
		}
		for _, item := range v.Secret.Items {
			if item.Key == authv1alpha1.SecretKeyAPIKey {
				volumes[v.Name] = item.Path
			}
		}
	}
	if len(volumes) != 1 {
		t.Fatalf("want one volume of Secret %s with %s, got %v", key.SecretName(), authv1alpha1.SecretKeyAPIKey, volumes)
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		var file string
		for _, e := range c.Env {
			if e.Name == latchkey.EnvAPIKey || e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				t.Fatalf("container %s takes the key from an environment variable (%s), which never refreshes", c.Name, e.Name)
			}
			if e.Name == latchkey.EnvAPIKeyFile {
				file = e.Value
			}
		}
		for _, m := range c.VolumeMounts {
			if p, ok := volumes[m.Name]; ok {
				if m.SubPath != "" {
					t.Fatalf("container %s mounts the key with subPath, which never refreshes", c.Name)
				}
				if file != path.Join(m.MountPath, p) {
					t.Fatalf("container %s: %s is %q, the key is at %q", c.Name, latchkey.EnvAPIKeyFile, file, path.Join(m.MountPath, p))
				}
				return
			}
		}
	}
	t.Fatal("no container mounts the key's volume")
}
