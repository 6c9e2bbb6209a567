package plugin

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv/inprocess"
)

// With the operator running, uninstall deletes every ApiKey through it:
// each key's record is revoked before the ApiKey goes.
func TestUninstallWithTheOperator(t *testing.T) {
	ns := lk.Namespace(t)
	names := []string{"a", "b"}
	raws := make([]string, 0, len(names))
	for _, name := range names {
		if _, err := run(t, time.Now(), "", "create", name, "-n", ns); err != nil {
			t.Fatal(err)
		}
		s := &corev1.Secret{}
		if err := lk.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
			t.Fatal(err)
		}
		raws = append(raws, string(s.Data[authv1alpha1.SecretKeyAPIKey]))
	}
	out, err := run(t, time.Now(), "", "uninstall", "--wait", "30s")
	if err != nil || !strings.Contains(out, "Every ApiKey is deleted and its record revoked") {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	var left authv1alpha1.ApiKeyList
	if err := lk.Client.List(context.Background(), &left); err != nil || len(left.Items) != 0 {
		t.Fatalf("ApiKeys left: %d (%v)", len(left.Items), err)
	}
	for _, raw := range raws {
		if _, err := lk.Operator.Verifier.Verify(raw); err == nil {
			t.Fatal("a key still authenticates after uninstall")
		}
	}
}

// With the operator gone, an ApiKey could never be deleted: its webhook
// refuses the write and its finalizer waits for the operator, so its
// namespace would stay Terminating for ever. uninstall releases it.
func TestUninstallWithoutTheOperator(t *testing.T) {
	ctx := context.Background()
	gone, err := inprocess.Start(ctx, inprocess.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = gone.Stop() }()
	c := gone.Client
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "uninstall-"}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "orphan"}}
	if err := c.Create(ctx, key); err != nil {
		t.Fatal(err)
	}
	gone.WaitForPhase(t, ns.Name, key.Name, authv1alpha1.PhaseActive)
	gone.StopOperator()
	if err := c.Delete(ctx, key); !apierrors.IsInternalError(err) {
		t.Fatalf("deleting an ApiKey with the operator down: %v, want the webhook's refusal", err)
	}

	var out, errOut bytes.Buffer
	o := &Options{
		Streams:   genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut},
		Flags:     genericclioptions.NewConfigFlags(false),
		Color:     ptr.To(false),
		NewClient: func() (client.Client, error) { return c, nil },
	}
	cmd := NewCommand(o)
	cmd.SetArgs([]string{"uninstall", "--wait", "2s"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("uninstall: %v\n%s%s", err, out.String(), errOut.String())
	}
	for _, want := range []string{"the operator is not running", "Deleted ValidatingWebhookConfiguration", "Released " + ns.Name + "/orphan"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("uninstall printed no %q:\n%s", want, out.String())
		}
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(key), key); !apierrors.IsNotFound(err) {
		t.Fatalf("the ApiKey is still there (finalizers %v): %v", key.Finalizers, err)
	}
	var vwcs admissionregistrationv1.ValidatingWebhookConfigurationList
	if err := c.List(ctx, &vwcs); err != nil {
		t.Fatal(err)
	}
	for _, vwc := range vwcs.Items {
		for _, w := range vwc.Webhooks {
			if w.Name == apiKeyWebhook {
				t.Fatalf("the webhook configuration %s is still there", vwc.Name)
			}
		}
	}
}
