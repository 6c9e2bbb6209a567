package testenv

import (
	"context"

	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// StartManager starts a controller-runtime manager in this process, as cfg
// (nil: the admin), once setup has added what the test runs to it; what a
// test does not serve (metrics, probes) is off, and controllers may be
// registered again by the next test. stop stops it and says how it ended.
func (e *Env) StartManager(cfg *rest.Config, o ctrl.Options, setup func(ctrl.Manager) error) (stop func() error, err error) {
	if cfg == nil {
		cfg = e.Config
	}
	if o.Scheme == nil {
		o.Scheme = e.Scheme
	}
	o.Metrics = metricsserver.Options{BindAddress: "0"}
	o.HealthProbeBindAddress = "0"
	o.Controller = config.Controller{SkipNameValidation: ptr.To(true)}
	mgr, err := ctrl.NewManager(cfg, o)
	if err != nil {
		return nil, err
	}
	if err := setup(mgr); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	return func() error {
		cancel()
		return <-done
	}, nil
}
