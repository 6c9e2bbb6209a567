package plugin

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// newEnable opts a namespace in to key delivery: a RoleBinding that lets
// the manager get, create and patch Secrets there, and nowhere else.
func newEnable(o *Options) *cobra.Command {
	var serviceAccount string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "enable",
		Short: "Let Latchkey deliver keys to Secrets in a namespace",
		Long: `Let Latchkey deliver keys in a namespace: binds the latchkey-key-delivery
ClusterRole (get, create and, to rotate a key, patch Secrets; never list or watch) to the manager's
ServiceAccount there. Latchkey holds no Secret access anywhere else.
Undo with: kubectl delete rolebinding latchkey-key-delivery -n NAMESPACE`,
		Example: `  kubectl latchkey enable -n payments`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, err := o.namespace(false)
			if err != nil {
				return err
			}
			saNamespace, saName, ok := cutServiceAccount(serviceAccount)
			if !ok {
				return fmt.Errorf("--service-account must be NAMESPACE:NAME, not %q", serviceAccount)
			}
			c, err := o.NewClient()
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(timeout)
			defer cancel()
			rb := &rbacv1.RoleBinding{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: authv1alpha1.KeyDeliveryClusterRole,
					Labels: map[string]string{authv1alpha1.LabelManagedBy: authv1alpha1.ManagedByValue}},
				RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: authv1alpha1.KeyDeliveryClusterRole},
				Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: saNamespace, Name: saName}},
			}
			switch err := c.Create(ctx, rb); {
			case apierrors.IsAlreadyExists(err):
				fmt.Fprintf(o.Streams.Out, "Latchkey already delivers keys in %s (RoleBinding %s).\n", ns, rb.Name)
				return nil
			case apierrors.IsForbidden(err):
				return fmt.Errorf("you may not grant access to Secrets in %s (%w): ask an admin of the namespace", ns, err)
			case err != nil:
				return fmt.Errorf("creating RoleBinding %s: %w", rb.Name, err)
			}
			fmt.Fprintf(o.Streams.Out, "Latchkey may now deliver keys in %s: RoleBinding %s lets %s get, create and patch Secrets there. Keys waiting there are minted within %s.\n",
				ns, rb.Name, serviceAccount, authv1alpha1.KeyDeliveryRetry)
			return nil
		},
	}
	cmd.Flags().StringVar(&serviceAccount, "service-account", authv1alpha1.DefaultServiceAccount, "The Latchkey manager's ServiceAccount, NAMESPACE:NAME.")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "How long to wait for the API server.")
	return cmd
}

func cutServiceAccount(s string) (namespace, name string, ok bool) {
	namespace, name, ok = strings.Cut(s, ":")
	return namespace, name, ok && namespace != "" && name != ""
}
