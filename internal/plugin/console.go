package plugin

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/console"
)

// NewConsole is `kubectl latchkey console`. It is exported so that the
// browser tests can run the command itself, with their own client.
func NewConsole(o *Options) *cobra.Command {
	var address string
	var noBrowser bool
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Open the API Keys and Usage pages in a browser",
		Long: `Serve the API Keys and Usage pages on a loopback address and open them in a
browser. The pages act as you, with this kubeconfig: what you can see and do
is what your RBAC allows. The printed link carries a token for this run only;
stop the console with Ctrl-C.`,
		Example: `  kubectl latchkey console
  kubectl latchkey console -n payments --address 127.0.0.1:8080 --no-browser`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, c, err := o.connect(false)
			if err != nil {
				return err
			}
			srv, err := console.Listen(address, console.Config{
				Client: c, Actions: consoleActions{o}, Namespace: ns, Clock: o.Clock, Log: logr.FromContextOrDiscard(cmd.Context()),
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(o.Streams.Out, "Latchkey console (%s): %s\nThe link is for you only: it carries this run's token. Press Ctrl-C to stop.\n", ns, srv.URL())
			if !noBrowser {
				if err := console.OpenBrowser(srv.URL()); err != nil {
					fmt.Fprintf(o.Streams.ErrOut, "Could not open a browser (%v): open the link above.\n", err)
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return srv.Serve(ctx)
		},
	}
	cmd.Flags().StringVar(&address, "address", "127.0.0.1:0", "Loopback address to serve on (default: a free port).")
	cmd.Flags().BoolVar(&noBrowser, "no-browser", false, "Print the link without opening a browser.")
	return cmd
}

// consoleActions are the console's changes, made by the same code as the
// terminal commands.
type consoleActions struct{ o *Options }

func (a consoleActions) Create(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey) (string, error) {
	key.Spec.Format = authv1alpha1.FormatPrefixed
	return a.o.createReady(ctx, c, key)
}

func (a consoleActions) Revoke(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey) error {
	if key.Spec.Revoked {
		return nil
	}
	base := key.DeepCopy()
	key.Spec.Revoked = true
	if err := c.Patch(ctx, key, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("revoking: %w", err)
	}
	return nil
}

func (a consoleActions) Rotate(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey) (string, error) {
	before := key.Status.Rotation
	if err := a.o.requestRotation(ctx, c, key, nil); err != nil {
		return "", err
	}
	return a.o.rotated(ctx, c, key, before)
}

func (a consoleActions) Suspend(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey, suspend bool) error {
	if state := key.State(a.o.Clock.Now()); state == authv1alpha1.PhaseRevoked || state == authv1alpha1.PhaseExpired {
		return fmt.Errorf("%s is %s, for good", key.Name, state)
	}
	if key.Spec.Suspended != suspend {
		base := key.DeepCopy()
		key.Spec.Suspended = suspend
		if err := c.Patch(ctx, key, client.MergeFrom(base)); err != nil {
			return err
		}
	}
	want := workingPhase(key)
	return waitFor(ctx, c, key, string(want), func(k *authv1alpha1.ApiKey) bool {
		return k.Status.ObservedGeneration == k.Generation && k.Status.Phase == want
	})
}

func (a consoleActions) ExpiresIn(key *authv1alpha1.ApiKey, now time.Time) string {
	return expiresIn(key, key.State(now), now)
}
