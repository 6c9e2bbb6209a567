package plugin

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// maxGracePeriod is the API's bound on spec.rotation.gracePeriod.
const maxGracePeriod = 168 * time.Hour

type rotateFlags struct {
	grace, output string
	timeout       time.Duration
}

const rotateLong = `Rotate an API key: Latchkey mints a new key into the same Secret (data key
api-key) and the previous key keeps working for the grace period: --grace,
else the ApiKey's spec.rotation.gracePeriod (1h by default); 0s stops it at
once, as revoke does. Pods that mount the Secret as a volume see the new key
within about a minute, with no restart. The new key is printed once.`

func newRotate(o *Options) *cobra.Command {
	var f rotateFlags
	cmd := &cobra.Command{
		Use:   "rotate NAME",
		Short: "Replace an API key with a new one, keeping the old one for a grace period",
		Long:  rotateLong,
		Example: `  kubectl latchkey rotate ci-pipeline
  kubectl latchkey rotate partner --grace 30m -n payments
  kubectl latchkey rotate leaked --grace 0s
  kubectl latchkey rotate ci -o json | jq -r .key`,
		Args: exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(f.output, "json", "yaml"); err != nil {
				return err
			}
			grace, err := parseGrace(f.grace)
			if err != nil {
				return err
			}
			ns, c, err := o.connect(false)
			if err != nil {
				return err
			}
			ctx, cancel := withTimeout(f.timeout)
			defer cancel()
			key, err := getKey(ctx, c, ns, args[0])
			if err != nil {
				return err
			}
			before := key.Status.Rotation
			if err := o.requestRotation(ctx, c, key, grace); err != nil {
				return err
			}
			raw, err := o.rotated(ctx, c, key, before)
			if err != nil {
				return err
			}
			return o.printRotated(f.output, key, raw, before)
		},
	}
	cmd.Flags().StringVar(&f.grace, "grace", "", "How long the previous key keeps working, 0s to 168h (default: the ApiKey's gracePeriod, 1h).")
	cmd.Flags().StringVarP(&f.output, "output", "o", "", "Output format: json or yaml.")
	cmd.Flags().DurationVar(&f.timeout, "timeout", time.Minute, "How long to wait for the new key.")
	return cmd
}

// parseGrace checks --grace as the API server would, before anything is sent.
func parseGrace(s string) (*metav1.Duration, error) {
	if s == "" {
		return nil, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || d > maxGracePeriod {
		return nil, fmt.Errorf("--grace must be a duration between 0s and 168h, such as 30m, not %q", s)
	}
	return &metav1.Duration{Duration: d}, nil
}

// requestRotation sets spec.rotation.requestedAt to now (and the grace
// period, when given).
func (o *Options) requestRotation(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey, grace *metav1.Duration) error {
	if state := key.State(o.Clock.Now()); state == authv1alpha1.PhaseRevoked || state == authv1alpha1.PhaseExpired {
		return fmt.Errorf("%s/%s is %s: only a working key can be rotated; create a new one with `kubectl latchkey create`", key.Namespace, key.Name, state)
	}
	base := key.DeepCopy()
	if key.Spec.Rotation == nil {
		key.Spec.Rotation = &authv1alpha1.RotationSpec{}
	}
	at := rotationInstant(key, o.Clock.Now())
	key.Spec.Rotation.RequestedAt = &at
	if grace != nil {
		key.Spec.Rotation.GracePeriod = grace
	}
	if err := c.Patch(ctx, key, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("requesting the rotation: %w", err)
	}
	return nil
}

// rotationInstant is a requestedAt that asks for a rotation now. A request
// must be strictly later than the current key's mint and than the request
// that minted it, and metav1.Time keeps whole seconds: so now is rounded
// up past its second, and past the earlier request, rotation and creation
// the object shows, in case this machine's clock lags the cluster's or
// the last rotation was less than a second ago.
func rotationInstant(key *authv1alpha1.ApiKey, now time.Time) metav1.Time {
	at := now.Truncate(time.Second).Add(time.Second)
	earlier := []*metav1.Time{key.Status.RotatedAt, &key.CreationTimestamp}
	if key.Spec.Rotation != nil {
		earlier = append(earlier, key.Spec.Rotation.RequestedAt)
	}
	for _, t := range earlier {
		if t != nil && !at.After(t.Time) {
			at = t.Truncate(time.Second).Add(time.Second)
		}
	}
	return metav1.NewTime(at)
}

// rotated waits until the operator has delivered the key that follows
// rotation before, and returns it from the Secret, once the Secret holds
// the key the status names.
func (o *Options) rotated(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey, before int32) (string, error) {
	spin := newSpinner(o, fmt.Sprintf("Waiting for the new key of %s/%s", key.Namespace, key.Name))
	defer spin.stop()
	want := workingPhase(key)
	var blocked error
	err := waitFor(ctx, c, key, "rotated", func(k *authv1alpha1.ApiKey) bool {
		if k.Status.ObservedGeneration != k.Generation {
			return false
		}
		if k.Status.Rotation > before {
			return k.Status.Phase == want
		}
		blocked = rotationBlocked(k)
		return blocked != nil
	})
	if err == nil {
		err = blocked
	}
	if err != nil {
		return "", err
	}
	for {
		raw, err := rawKey(ctx, c, key)
		if err != nil || keys.Hint(raw) == key.Status.KeyHint {
			return raw, err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the key was rotated (now %s) but Secret %s/%s holds another: read it with kubectl get secret", key.Status.KeyHint, key.Namespace, key.SecretName())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// rotationBlocked is why the operator, having seen the request, cannot
// rotate key: it writes a new key only into the Secret it created while
// that holds the current key, and says so in KeyDelivered.
func rotationBlocked(key *authv1alpha1.ApiKey) error {
	cond := meta.FindStatusCondition(key.Status.Conditions, authv1alpha1.ConditionKeyDelivered)
	if cond == nil || cond.Status != metav1.ConditionFalse {
		return nil
	}
	switch cond.Reason {
	case authv1alpha1.ReasonSecretMissing, authv1alpha1.ReasonSecretChanged, authv1alpha1.ReasonSecretNotOwned:
		return fmt.Errorf("the key cannot be rotated now (%s): %s", cond.Reason, cond.Message)
	}
	return nil
}

// workingPhase is the phase a key that works, or would but for
// spec.suspended, is in.
func workingPhase(key *authv1alpha1.ApiKey) authv1alpha1.Phase {
	if key.Spec.Suspended {
		return authv1alpha1.PhaseSuspended
	}
	return authv1alpha1.PhaseActive
}

// printRotated shows the new key once and until when the one it replaced
// keeps working.
func (o *Options) printRotated(output string, key *authv1alpha1.ApiKey, raw string, before int32) error {
	var previous *authv1alpha1.PreviousKey
	for i := range key.Status.PreviousKeys {
		if key.Status.PreviousKeys[i].Rotation == before {
			previous = &key.Status.PreviousKeys[i]
			break
		}
	}
	extra := map[string]any{"rotation": key.Status.Rotation, "previousKey": previous}
	if err := o.printKey(output, "Rotated", key, raw, extra); err != nil || output != "" {
		return err
	}
	if previous == nil {
		_, err := fmt.Fprintln(o.Streams.Out, "The previous key no longer works (grace period 0s).")
		return err
	}
	until := previous.ValidUntil.Time
	_, err := fmt.Fprintf(o.Streams.Out, "The previous key (%s) keeps working until %s (for %s). Pods that mount the Secret see the new key within about a minute.\n",
		previous.KeyHint, until.UTC().Format(time.RFC3339), roughly(until.Sub(o.Clock.Now()).Round(time.Minute)))
	return err
}

func newSuspend(o *Options) *cobra.Command { return newSuspension(o, true) }

func newResume(o *Options) *cobra.Command { return newSuspension(o, false) }

// newSuspension is suspend (suspend true) or resume.
func newSuspension(o *Options, suspend bool) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "suspend NAME",
		Short: "Suspend an API key: refused at once, until it is resumed",
		Long: `Suspend an API key: requests carrying it, or any key of it still in a
rotation's grace period, are refused from the moment this command reports
success, until ` + "`kubectl latchkey resume`" + ` makes the same key work again. To end
a key for good, revoke it.`,
		Example: `  kubectl latchkey suspend partner -n payments`,
		Args:    exactlyOneName,
	}
	if !suspend {
		cmd.Use, cmd.Short = "resume NAME", "Resume a suspended API key: the same key works again"
		cmd.Long, cmd.Example = "", `  kubectl latchkey resume partner -n payments`
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ns, c, err := o.connect(false)
		if err != nil {
			return err
		}
		ctx, cancel := withTimeout(timeout)
		defer cancel()
		key, err := getKey(ctx, c, ns, args[0])
		if err != nil {
			return err
		}
		if state := key.State(o.Clock.Now()); state == authv1alpha1.PhaseRevoked || state == authv1alpha1.PhaseExpired {
			return fmt.Errorf("%s/%s is %s, for good: there is nothing to %s", ns, key.Name, state, cmd.Name())
		}
		if key.Spec.Suspended != suspend {
			base := key.DeepCopy()
			key.Spec.Suspended = suspend
			if err := c.Patch(ctx, key, client.MergeFrom(base)); err != nil {
				return fmt.Errorf("%s: %w", cmd.Name(), err)
			}
		}
		want := workingPhase(key)
		spin := newSpinner(o, fmt.Sprintf("Waiting for %s/%s to be %s", ns, key.Name, want))
		err = waitFor(ctx, c, key, string(want), func(k *authv1alpha1.ApiKey) bool {
			return k.Status.ObservedGeneration == k.Generation && k.Status.Phase == want
		})
		spin.stop()
		if err != nil {
			return err
		}
		if suspend {
			fmt.Fprintf(o.Streams.Out, "Suspended %s/%s (%s): requests with it are refused until `kubectl latchkey resume %s -n %s`.\n", ns, key.Name, key.Status.KeyHint, key.Name, ns)
		} else {
			fmt.Fprintf(o.Streams.Out, "Resumed %s/%s (%s): the same key works again.\n", ns, key.Name, key.Status.KeyHint)
		}
		return nil
	}
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "How long to wait for the operator to report the new state.")
	return cmd
}
