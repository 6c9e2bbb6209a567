package plugin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// createFlags are create's flags.
type createFlags struct {
	description, expiresIn, format, secretName, output string
	timeout                                            time.Duration
}

func newCreate(o *Options) *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an API key and print it once",
		Example: `  kubectl latchkey create ci-pipeline --description "GitHub Actions CI"
  kubectl latchkey create partner --expires-in 720h --format hex -n payments
  kubectl latchkey create ci -o json | jq -r .key`,
		Args: exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f.output, "json", "yaml"); err != nil {
				return err
			}
			key, err := f.apiKey(o, args[0])
			if err != nil {
				return err
			}
			ns, err := o.namespace(false)
			if err != nil {
				return err
			}
			key.Namespace = ns
			c, err := o.NewClient()
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(f.timeout)
			defer cancel()
			raw, err := o.createReady(ctx, c, key)
			if err != nil {
				return err
			}
			return o.printCreated(f.output, key, raw)
		},
	}
	cmd.Flags().StringVar(&f.description, "description", "", "Who or what holds the key.")
	cmd.Flags().StringVar(&f.expiresIn, "expires-in", "", "Expire the key after this long, such as 720h.")
	cmd.Flags().StringVar(&f.format, "format", "prefixed", "Key format: prefixed (lk_…, with a checksum) or hex.")
	cmd.Flags().StringVar(&f.secretName, "secret-name", "", "Secret to deliver the key to (default: the key's name).")
	cmd.Flags().StringVarP(&f.output, "output", "o", "", "Output format: json or yaml.")
	cmd.Flags().DurationVar(&f.timeout, "timeout", time.Minute, "How long to wait until the key is Ready.")
	return cmd
}

// apiKey is the ApiKey the flags ask for, checked before anything is sent
// so that a mistyped flag creates nothing.
func (f *createFlags) apiKey(o *Options, name string) (*authv1alpha1.ApiKey, error) {
	key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Name: name}}
	key.Spec.Description, key.Spec.SecretName = f.description, f.secretName
	switch strings.ToLower(f.format) {
	case "prefixed", "":
		key.Spec.Format = authv1alpha1.FormatPrefixed
	case "hex":
		key.Spec.Format = authv1alpha1.FormatHex
	default:
		return nil, fmt.Errorf("--format must be prefixed or hex, not %q", f.format)
	}
	if f.expiresIn != "" {
		d, err := time.ParseDuration(f.expiresIn)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("--expires-in must be a positive duration such as 720h, not %q", f.expiresIn)
		}
		at := metav1.NewTime(o.Clock.Now().Add(d).Truncate(time.Second))
		key.Spec.ExpiresAt = &at
	}
	return key, nil
}

// createReady creates key, waits until the operator has delivered it and
// returns the raw key from its Secret: the only place it exists.
func (o *Options) createReady(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey) (string, error) {
	if err := c.Create(ctx, key); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return "", fmt.Errorf("an ApiKey named %q already exists in %s: pick another name, or `kubectl latchkey list`", key.Name, key.Namespace)
		}
		return "", fmt.Errorf("creating the ApiKey: %w", err)
	}
	spin := newSpinner(o, fmt.Sprintf("Waiting for %s/%s to be Ready", key.Namespace, key.Name))
	err := waitReady(ctx, c, key)
	spin.stop()
	if err != nil {
		return "", err
	}
	secret := &corev1.Secret{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: key.SecretName()}, secret); err != nil {
		return "", fmt.Errorf("the key is Ready but its Secret %s cannot be read (%w): read it with kubectl get secret", key.SecretName(), err)
	}
	return string(secret.Data[authv1alpha1.SecretKeyAPIKey]), nil
}

// printCreated shows the raw key this once, in output's format or with
// the reminder that nothing shows it again.
func (o *Options) printCreated(output string, key *authv1alpha1.ApiKey, raw string) error {
	ns := key.Namespace
	if output != "" {
		return printStructured(o.Streams.Out, output, map[string]any{
			"namespace": ns, "name": key.Name, "secretName": key.SecretName(), "key": raw,
			"keyHint": key.Status.KeyHint, "expiresAt": key.Spec.ExpiresAt,
		})
	}
	fmt.Fprintf(o.Streams.Out, "Created API key %s/%s (%s).\n\n  %s\n\n", ns, key.Name, key.Status.KeyHint, raw)
	fmt.Fprintf(o.Streams.Out, "Store it now: this is the only time it is shown. It stays in Secret %s/%s until that is deleted.\n", ns, key.SecretName())
	return nil
}

func waitReady(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey) error {
	for {
		if err := c.Get(ctx, client.ObjectKeyFromObject(key), key); err != nil {
			return fmt.Errorf("reading the ApiKey: %w", err)
		}
		if key.Status.Phase == authv1alpha1.PhaseFailed {
			cond := meta.FindStatusCondition(key.Status.Conditions, authv1alpha1.ConditionKeyDelivered)
			msg := "delivery failed"
			if cond != nil {
				msg = cond.Message
			}
			return fmt.Errorf("the key cannot be delivered: %s", msg)
		}
		if meta.IsStatusConditionTrue(key.Status.Conditions, authv1alpha1.ConditionReady) {
			return nil
		}
		if cond := meta.FindStatusCondition(key.Status.Conditions, authv1alpha1.ConditionKeyDelivered); cond != nil && cond.Reason == authv1alpha1.ReasonSecretAccessDenied {
			return fmt.Errorf("the key waits until Latchkey may deliver keys in %s: run `kubectl latchkey enable -n %s` (or ask an admin of the namespace), and it is minted then",
				key.Namespace, key.Namespace)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the key was not Ready in time (phase %q): is the Latchkey operator running? Check `kubectl get apikey %s -o yaml`", key.Status.Phase, key.Name)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func newList(o *Options) *cobra.Command {
	var all bool
	var output string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List API keys",
		Example: `  kubectl latchkey list
  kubectl latchkey ls -A
  kubectl latchkey list -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "json", "yaml"); err != nil {
				return err
			}
			ns, c, err := o.connect(all)
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(30 * time.Second)
			defer cancel()
			var list authv1alpha1.ApiKeyList
			if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
				return fmt.Errorf("listing ApiKeys: %w", err)
			}
			if output != "" {
				return printStructured(o.Streams.Out, output, list)
			}
			return o.printKeys(list.Items, all)
		},
	}
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "List the keys of every namespace.")
	cmd.Flags().StringVarP(&output, "output", "o", "", "Output format: json or yaml.")
	return cmd
}

// printKeys prints the console's columns and the count of active keys.
func (o *Options) printKeys(keys []authv1alpha1.ApiKey, all bool) error {
	w := tabwriter.NewWriter(o.Streams.Out, 0, 4, 3, ' ', 0)
	if all {
		fmt.Fprint(w, "NAMESPACE\t")
	}
	fmt.Fprintln(w, "NAME\tKEY\tCREATED\tLAST USED\tSTATUS")
	active := 0
	for _, k := range keys {
		state := k.State(o.Clock.Now())
		if state == authv1alpha1.PhaseActive {
			active++
		}
		status := string(state)
		lastUsed := "Never"
		if k.Status.LastUsedAt != nil {
			lastUsed = k.Status.LastUsedAt.UTC().Format("2006-01-02 15:04")
		}
		hint := k.Status.KeyHint
		if hint == "" {
			hint = "-"
		}
		if all {
			fmt.Fprintf(w, "%s\t", k.Namespace)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", k.Name, hint, k.CreationTimestamp.UTC().Format("2006-01-02"), lastUsed, o.paint(status))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(o.Streams.Out, "\nActive keys: %d\n", active)
	return err
}

func (o *Options) paint(status string) string {
	if !o.colour() {
		return status
	}
	code := map[string]string{"Active": "32", "Revoked": "31", "Expired": "33", "Failed": "31"}[status]
	if code == "" {
		return status
	}
	return "\x1b[" + code + "m" + status + "\x1b[0m"
}

func newRevoke(o *Options) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke an API key, for good",
		Long: `Revoke an API key. Requests carrying it are refused from the moment this
command reports success; a revoked key can never be restored.`,
		Example: `  kubectl latchkey revoke ci-pipeline
  kubectl latchkey revoke ci-pipeline --yes -n payments`,
		Args: exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, c, err := o.connect(false)
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(time.Minute)
			defer cancel()
			key := &authv1alpha1.ApiKey{}
			if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: args[0]}, key); err != nil {
				if apierrors.IsNotFound(err) {
					return fmt.Errorf("no ApiKey %q in %s: see `kubectl latchkey list`", args[0], ns)
				}
				return err
			}
			if key.Spec.Revoked {
				fmt.Fprintf(o.Streams.Out, "%s/%s is already revoked.\n", ns, key.Name)
				return nil
			}
			if !yes {
				fmt.Fprintf(o.Streams.Out, "Revoke %s/%s (%s)? It stops working at once and cannot be restored. [y/N] ", ns, key.Name, key.Status.KeyHint)
				var answer string
				_, _ = fmt.Fscanln(o.Streams.In, &answer)
				if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
					return errors.New("not revoked: answer y to confirm, or pass --yes")
				}
			}
			base := key.DeepCopy()
			key.Spec.Revoked = true
			start := o.Clock.Now()
			if err := c.Patch(ctx, key, client.MergeFrom(base)); err != nil {
				return fmt.Errorf("revoking: %w", err)
			}
			took := o.Clock.Since(start)
			fmt.Fprintf(o.Streams.Out, "Revoked %s/%s: requests with it are refused from now on (took effect in %s).\n", ns, key.Name, took.Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "Do not ask for confirmation.")
	return cmd
}

func exactlyOneName(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s takes exactly one NAME; see --help", cmd.Name())
	}
	return nil
}
