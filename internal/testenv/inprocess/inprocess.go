// Package inprocess runs Latchkey as `make dev` does — a control plane and
// the operator as cmd/main.go sets it up, in the test's process — with
// what tests need beyond pkg/devenv: the operator's insides, settings
// tuned before it starts, and a stop and restart of the operator alone, as
// a manager that crashes or is down.
package inprocess

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"

	"github.com/go-logr/logr"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// Options configure the operator.
type Options struct {
	// TokenWebhook points kube-apiserver's token webhook at the operator.
	TokenWebhook bool
	// Logger receives the operator's logs; default: discarded.
	Logger logr.Logger
	// Tune adjusts the manager's defaults each time the operator starts.
	Tune func(*operator.Options)
}

// Latchkey is a control plane with the operator running beside the test.
type Latchkey struct {
	*testenv.Env
	// Endpoint is the verification endpoints' base URL; HTTPClient trusts them.
	Endpoint   string
	HTTPClient *http.Client
	// Operator is the running operator's insides; a restart replaces it.
	Operator *operator.Operator
	o        Options
	local    *operator.Local
}

// Start starts a control plane and the operator.
func Start(ctx context.Context, o Options) (*Latchkey, error) {
	if o.Logger.GetSink() == nil {
		o.Logger = logr.Discard()
	}
	env, err := testenv.Start(testenv.Options{Webhooks: true, TokenWebhook: o.TokenWebhook})
	if err != nil {
		return nil, err
	}
	lk := &Latchkey{Env: env, Endpoint: env.Endpoint(), HTTPClient: env.HTTPClient(), o: o}
	if err := lk.StartOperator(ctx); err != nil {
		_ = env.Stop()
		return nil, err
	}
	return lk, nil
}

// Main is a TestMain for a package whose tests talk to the operator, as
// testenv.Main is for one that needs only a control plane: it starts one
// with o, hands it to use, runs the tests, stops it and exits with their
// code.
func Main(m *testing.M, o Options, use func(*Latchkey)) {
	lk, err := Start(context.Background(), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	use(lk)
	code := m.Run()
	if err := lk.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}

// StartOperator starts the operator again after StopOperator, as a
// restarted manager would come back.
func (lk *Latchkey) StartOperator(ctx context.Context) error {
	opts := operator.DefaultOptions()
	if lk.o.Tune != nil {
		lk.o.Tune(&opts)
	}
	local, err := operator.StartLocal(ctx, lk.ControlPlane, lk.o.Logger, opts)
	if err != nil {
		return err
	}
	lk.local, lk.Operator = local, local.Operator
	return nil
}

// StopOperator stops the operator and leaves the control plane running, as
// when the manager is down.
func (lk *Latchkey) StopOperator() {
	if lk.local != nil {
		lk.local.Stop()
		lk.local = nil
	}
}

// RestartOperator stops the operator and starts a new one on the same
// control plane, as a crash and restart of the manager would.
func (lk *Latchkey) RestartOperator(ctx context.Context) error {
	lk.StopOperator()
	return lk.StartOperator(ctx)
}

// Stop stops the operator, then the control plane.
func (lk *Latchkey) Stop() error {
	lk.StopOperator()
	return lk.Env.Stop()
}

// Mint creates an ApiKey, waits until it is Active and the operator's
// index knows it, and returns it with its raw key.
func (lk *Latchkey) Mint(tb testing.TB, ns, name string, spec authv1alpha1.ApiKeySpec) (*authv1alpha1.ApiKey, string) {
	tb.Helper()
	key := &authv1alpha1.ApiKey{Spec: spec}
	key.Namespace, key.Name = ns, name
	raw := lk.Env.Mint(tb, key, lk.Verifies)
	return key, raw
}

// Verifies says whether the running operator accepts the raw key.
func (lk *Latchkey) Verifies(raw string) error {
	_, err := lk.Operator.Verifier.Verify(raw)
	return err
}
