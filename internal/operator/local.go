package operator

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/latchkey-dev/latchkey/internal/fencing"
	"github.com/latchkey-dev/latchkey/internal/serving"
	"github.com/latchkey-dev/latchkey/pkg/devenv/controlplane"
)

// Local is the operator running in this process against a local control
// plane, as `make dev` and the tests run it.
type Local struct {
	*Operator
	stop func()
}

// StartLocal runs the operator, as cmd/main.go sets it up, in this process
// against cp: its endpoints and admission webhook on the ports cp's
// configuration points at, Envoy's ext_authz on cp's ExtAuthzAddress with
// the same certificate, no metrics or probe listeners. It returns once
// the endpoints are open and the key index has synced. The token webhook's
// audiences are cp's unless o names some.
func StartLocal(ctx context.Context, cp *controlplane.ControlPlane, logger logr.Logger, o Options) (*Local, error) {
	server := serving.New(cp.ServingOptions())
	mgr, err := ctrl.NewManager(cp.Config, ctrl.Options{
		Scheme:                 cp.Scheme,
		Logger:                 logger,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		// Restarted operators register their controllers' names again.
		Controller:    config.Controller{SkipNameValidation: ptr.To(true)},
		WebhookServer: server,
		Cache:         CacheOptions(),
		Client:        ClientOptions(),
	})
	if err != nil {
		return nil, err
	}
	if o.APIServerAudiences == nil {
		o.APIServerAudiences = cp.APIServerAudiences()
	}
	o.ExtAuthzBindAddress, o.ServingCertDir = "0", cp.WebhookCertDir
	if cp.ExtAuthzPort() != 0 {
		o.ExtAuthzBindAddress = cp.ExtAuthzAddress()
	}
	if o.ReplicaName == "" {
		// Each operator of this process is a replica of its own.
		o.ReplicaName = "local-" + strings.ToLower(rand.Text()[:8])
	}
	if o.FenceBindAddress == fencing.DefaultBindAddress {
		o.FenceBindAddress = "127.0.0.1:0"
	}
	op, err := Setup(mgr, o)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- mgr.Start(runCtx) }()
	l := &Local{Operator: op, stop: func() {
		cancel()
		if err := <-done; err != nil {
			logger.Error(err, "Operator stopped with an error")
		}
	}}
	started := server.StartedChecker()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-done:
			cancel()
			return nil, fmt.Errorf("the operator stopped: %w", err)
		default:
		}
		if started(nil) == nil && op.Verifier.Synced() && (op.ExtAuthz == nil || op.ExtAuthz.Addr() != nil) &&
			(op.Replica == nil || op.Replica.Ready() == nil) {
			return l, nil
		}
	}
	l.Stop()
	return nil, errors.New("the operator's endpoints did not come up within 60s")
}

// Stop stops the operator and returns once it has.
func (l *Local) Stop() { l.stop() }
