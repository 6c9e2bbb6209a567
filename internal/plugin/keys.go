package plugin

import (
	"context"
	"errors"
	"fmt"
	"maps"
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
	err := waitFor(ctx, c, key, "Ready", func(k *authv1alpha1.ApiKey) bool {
		return meta.IsStatusConditionTrue(k.Status.Conditions, authv1alpha1.ConditionReady)
	})
	spin.stop()
	if err != nil {
		return "", err
	}
	return rawKey(ctx, c, key)
}

// rawKey is the raw key in key's Secret: the only place it exists.
func rawKey(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey) (string, error) {
	secret := &corev1.Secret{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: key.Namespace, Name: key.SecretName()}, secret); err != nil {
		return "", fmt.Errorf("the key is Ready but its Secret %s cannot be read (%w): read it with kubectl get secret", key.SecretName(), err)
	}
	return string(secret.Data[authv1alpha1.SecretKeyAPIKey]), nil
}

// printCreated shows the raw key this once, in output's format or with
// the reminder that nothing shows it again.
func (o *Options) printCreated(output string, key *authv1alpha1.ApiKey, raw string) error {
	return o.printKey(output, "Created", key, raw, nil)
}

// printKey shows a raw key that done (Created, Rotated) delivered, this
// once, with extra fields in output's format.
func (o *Options) printKey(output, done string, key *authv1alpha1.ApiKey, raw string, extra map[string]any) error {
	ns := key.Namespace
	if output != "" {
		v := map[string]any{
			"namespace": ns, "name": key.Name, "secretName": key.SecretName(), "key": raw,
			"keyHint": key.Status.KeyHint, "expiresAt": key.Spec.ExpiresAt,
		}
		maps.Copy(v, extra)
		return printStructured(o.Streams.Out, output, v)
	}
	fmt.Fprintf(o.Streams.Out, "%s API key %s/%s (%s).\n\n  %s\n\n", done, ns, key.Name, key.Status.KeyHint, raw)
	fmt.Fprintf(o.Streams.Out, "Store it now: this is the only time it is shown. It stays in Secret %s/%s until that is deleted or the key is rotated.\n", ns, key.SecretName())
	return nil
}

// waitFor polls key until arrived says it has, and gives up early when
// the key cannot be delivered; what names the awaited state in errors.
func waitFor(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey, what string, arrived func(*authv1alpha1.ApiKey) bool) error {
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
		if arrived(key) {
			return nil
		}
		if cond := meta.FindStatusCondition(key.Status.Conditions, authv1alpha1.ConditionKeyDelivered); cond != nil && cond.Reason == authv1alpha1.ReasonSecretAccessDenied {
			return fmt.Errorf("the key waits until Latchkey may deliver keys in %s: run `kubectl latchkey enable -n %s` (or ask an admin of the namespace), and it is minted then",
				key.Namespace, key.Namespace)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the key was not %s in time (phase %q): is the Latchkey operator running? Check `kubectl get apikey %s -n %s -o yaml`", what, key.Status.Phase, key.Name, key.Namespace)
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
  kubectl latchkey list -o wide
  kubectl latchkey list -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "wide", "json", "yaml"); err != nil {
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
			if output != "" && output != "wide" {
				return printStructured(o.Streams.Out, output, list)
			}
			return o.printKeys(list.Items, all, output == "wide")
		},
	}
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "List the keys of every namespace.")
	cmd.Flags().StringVarP(&output, "output", "o", "", "Output format: wide (with scopes), json or yaml.")
	return cmd
}

// printKeys prints the console's columns (wide: and the scopes) and the
// count of active keys. STATUS comes last so that its colours, which
// tabwriter counts as width, misalign nothing.
func (o *Options) printKeys(keys []authv1alpha1.ApiKey, all, wide bool) error {
	w := tabwriter.NewWriter(o.Streams.Out, 0, 4, 3, ' ', 0)
	if all {
		fmt.Fprint(w, "NAMESPACE\t")
	}
	fmt.Fprint(w, "NAME\tKEY\tCREATED\tLAST USED\t")
	if wide {
		fmt.Fprint(w, "SCOPES\t")
	}
	fmt.Fprintln(w, "STATUS")
	active := 0
	now := o.Clock.Now()
	for i := range keys {
		k := &keys[i]
		state := k.State(now)
		if state == authv1alpha1.PhaseActive {
			active++
		}
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
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t", k.Name, hint, k.CreationTimestamp.UTC().Format("2006-01-02"), lastUsed)
		if wide {
			scopes := strings.Join(k.Spec.Scopes, ",")
			if scopes == "" {
				scopes = "-"
			}
			fmt.Fprintf(w, "%s\t", scopes)
		}
		status := o.paint(string(state))
		if soon := expiresIn(k, state, now); soon != "" {
			status += ", " + o.colourize(warningColour, "expires in "+soon)
		}
		fmt.Fprintln(w, status)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(o.Streams.Out, "\nActive keys: %d\n", active)
	return err
}

// expiryWarning is the manager's --expiry-warning default, for keys whose
// operator sets no ExpiringSoon condition.
const expiryWarning = 7 * 24 * time.Hour

// expiresIn is how soon a working key expires ("3d"), when the operator's
// ExpiringSoon condition warns of it (or, with no condition, within
// expiryWarning); "" otherwise. The condition knows the manager's
// --expiry-warning and that a scheduled rotation coming first makes the
// expiry moot.
func expiresIn(k *authv1alpha1.ApiKey, state authv1alpha1.Phase, now time.Time) string {
	if k.Spec.ExpiresAt == nil || (state != authv1alpha1.PhaseActive && state != authv1alpha1.PhaseSuspended) {
		return ""
	}
	left := k.Spec.ExpiresAt.Sub(now)
	if cond := meta.FindStatusCondition(k.Status.Conditions, authv1alpha1.ConditionExpiringSoon); cond != nil {
		if cond.Status != metav1.ConditionTrue {
			return ""
		}
	} else if left > expiryWarning {
		return ""
	}
	return roughly(left)
}

// roughly is d in its largest whole unit: 3d, 5h, 12m.
func roughly(d time.Duration) string {
	switch {
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	case d >= time.Hour:
		return fmt.Sprintf("%dh", d/time.Hour)
	case d >= time.Minute:
		return fmt.Sprintf("%dm", d/time.Minute)
	default:
		return "<1m"
	}
}

// warningColour is the terminal's warning colour (yellow): expiry, and
// keys that do not work for now.
const warningColour = "33"

func (o *Options) paint(status string) string {
	code := map[string]string{"Active": "32", "Suspended": warningColour, "Revoked": "31", "Expired": warningColour, "Failed": "31"}[status]
	return o.colourize(code, status)
}

// colourize wraps s in the ANSI colour code when stdout takes colour.
func (o *Options) colourize(code, s string) string {
	if code == "" || !o.colour() {
		return s
	}
	return "\x1b[" + code + "m" + s + "\x1b[0m"
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
			key, err := getKey(ctx, c, ns, args[0])
			if err != nil {
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

// getKey reads the ApiKey name in ns, pointing at list when there is none.
func getKey(ctx context.Context, c client.Client, ns, name string) (*authv1alpha1.ApiKey, error) {
	key := &authv1alpha1.ApiKey{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, key); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("no ApiKey %q in %s: see `kubectl latchkey list`", name, ns)
		}
		return nil, err
	}
	return key, nil
}

func exactlyOneName(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s takes exactly one NAME; see --help", cmd.Name())
	}
	return nil
}
