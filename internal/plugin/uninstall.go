package plugin

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// apiKeyWebhook is the admission webhook's name in its configuration
// (webhook/v1alpha1, config/webhook/manifests.yaml).
const apiKeyWebhook = "vapikey-v1alpha1.latchkey.dev"

// newUninstall deletes every ApiKey so that removing Latchkey leaves
// nothing stuck: an ApiKey holds a finalizer only the operator removes,
// and its admission webhook refuses every ApiKey write while the operator
// is down, so a namespace or CRD deleted without the operator would wait
// for ever.
func newUninstall(o *Options) *cobra.Command {
	var waitFor time.Duration
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Delete every ApiKey, so that Latchkey can be removed in any order",
		Long: `Delete every ApiKey in every namespace, so that removing Latchkey leaves no
namespace or CRD stuck on a finalizer. With the operator running, it revokes
each key's record and lets the ApiKey go. ApiKeys still there after --wait
(the operator is down, or already removed) are released: Latchkey's
admission webhook configuration, which refuses ApiKey writes while the
operator is down, is deleted, and their finalizer is removed. Every key
stops authenticating, since nothing verifies it any more.
Then: kubectl delete -f dist/install.yaml (run before or after it).`,
		Example: `  kubectl latchkey uninstall && kubectl delete -f dist/install.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.NewClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			left, err := deleteAllKeys(ctx, c, waitFor)
			if err != nil {
				return err
			}
			if len(left) == 0 {
				fmt.Fprintln(o.Streams.Out, "Every ApiKey is deleted and its record revoked. Now: kubectl delete -f dist/install.yaml")
				return nil
			}
			fmt.Fprintf(o.Streams.Out, "%d ApiKeys are left: the operator is not running to revoke their records. Releasing them.\n", len(left))
			if err := deleteWebhookConfigurations(ctx, c, o); err != nil {
				return err
			}
			for i := range left {
				if err := release(ctx, c, &left[i]); err != nil {
					return err
				}
				fmt.Fprintf(o.Streams.Out, "Released %s/%s (its record was not revoked; it goes with the CRDs).\n", left[i].Namespace, left[i].Name)
			}
			fmt.Fprintln(o.Streams.Out, "No ApiKey is left. Now, if not done yet: kubectl delete -f dist/install.yaml")
			return nil
		},
	}
	cmd.Flags().DurationVar(&waitFor, "wait", time.Minute, "How long the operator has to revoke the deleted keys' records before they are released without it.")
	return cmd
}

// deleteAllKeys deletes every ApiKey and waits for the operator to let
// them go; it returns those still there. When the webhook cannot be called
// the operator is down and will let none go: it returns them all at once.
func deleteAllKeys(ctx context.Context, c client.Client, timeout time.Duration) ([]authv1alpha1.ApiKey, error) {
	var keys authv1alpha1.ApiKeyList
	if err := c.List(ctx, &keys); err != nil {
		return nil, fmt.Errorf("listing ApiKeys: %w", err)
	}
	for i := range keys.Items {
		switch err := c.Delete(ctx, &keys.Items[i]); {
		case err == nil, apierrors.IsNotFound(err):
		case apierrors.IsInternalError(err):
			// "failed calling webhook": nothing answers for the operator.
			return keys.Items, nil
		default:
			return nil, fmt.Errorf("deleting ApiKey %s/%s: %w", keys.Items[i].Namespace, keys.Items[i].Name, err)
		}
	}
	var left []authv1alpha1.ApiKey
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := c.List(ctx, &keys); err != nil {
			return false, fmt.Errorf("listing ApiKeys: %w", err)
		}
		left = keys.Items
		return len(left) == 0, nil
	})
	if err != nil && !wait.Interrupted(err) {
		return nil, err
	}
	return left, nil
}

// deleteWebhookConfigurations deletes the webhook configurations that hold
// Latchkey's ApiKey webhook.
func deleteWebhookConfigurations(ctx context.Context, c client.Client, o *Options) error {
	var list admissionregistrationv1.ValidatingWebhookConfigurationList
	if err := c.List(ctx, &list); err != nil {
		return fmt.Errorf("listing ValidatingWebhookConfigurations: %w", err)
	}
	for i := range list.Items {
		vwc := &list.Items[i]
		for _, w := range vwc.Webhooks {
			if w.Name != apiKeyWebhook {
				continue
			}
			if err := c.Delete(ctx, vwc); client.IgnoreNotFound(err) != nil {
				return fmt.Errorf("deleting ValidatingWebhookConfiguration %s: %w", vwc.Name, err)
			}
			fmt.Fprintf(o.Streams.Out, "Deleted ValidatingWebhookConfiguration %s: without the operator it refuses every ApiKey write.\n", vwc.Name)
			break
		}
	}
	return nil
}

// release deletes an ApiKey and removes the operator's finalizer from it.
func release(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey) error {
	if err := c.Delete(ctx, key); err != nil {
		return client.IgnoreNotFound(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(key), key); err != nil {
		return client.IgnoreNotFound(err)
	}
	base := key.DeepCopy()
	if !controllerutil.RemoveFinalizer(key, authv1alpha1.Finalizer) {
		return nil
	}
	if err := c.Patch(ctx, key, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("removing the finalizer of ApiKey %s/%s: %w", key.Namespace, key.Name, err)
	}
	return nil
}
