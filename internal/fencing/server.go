package fencing

import (
	"context"
	"encoding/json"
	"errors"
	stdlog "log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// DefaultBindAddress is where a replica serves its peers.
const DefaultBindAddress = ":9445"

// peerHandler is the peer endpoint: other replicas fence this one's
// verifier through it, and read its fences when they catch up.
type peerHandler struct {
	identity string
	verifier *verifier.Verifier
}

func (h *peerHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == PathFence && r.Method == http.MethodPost:
		h.fence(w, r)
	case r.URL.Path == PathFences && r.Method == http.MethodGet:
		fences := h.verifier.HeldFences()
		a := Answer{Replica: h.identity, Fences: make([]Fence, 0, len(fences))}
		for _, f := range fences {
			a.Fences = append(a.Fences, FenceOf(f))
		}
		answer(w, a)
	case r.URL.Path == PathFence || r.URL.Path == PathFences:
		http.Error(w, r.URL.Path+" does not take "+r.Method, http.StatusMethodNotAllowed)
	default:
		http.NotFound(w, r)
	}
}

func (h *peerHandler) fence(w http.ResponseWriter, r *http.Request) {
	var f Fence
	if err := decodeStrict(r.Body, &f); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	held, err := f.Held()
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := h.verifier.FenceHeld(held); err != nil {
		var full verifier.ErrTooManyFences
		if errors.As(err, &full) {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	log.FromContext(r.Context()).V(1).Info("Fenced a key for a peer", "apiKey", klog.KRef(held.Key.Namespace, held.Key.Name), "uid", held.UID)
	answer(w, Answer{Replica: h.identity})
}

func answer(w http.ResponseWriter, a Answer) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a)
}

// serve serves h on l until ctx ends.
func serve(ctx context.Context, l net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    8 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		// Refused handshakes (no replica certificate) are for operators
		// debugging, not for the console.
		ErrorLog: stdlog.New(logWriter{log.FromContext(ctx)}, "", 0),
	}
	errs := make(chan error, 1)
	go func() { errs <- srv.Serve(l) }()
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	if err := <-errs; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// logWriter hands the peer server's own messages to the logger, verbosely.
type logWriter struct{ logger logr.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.logger.V(1).Info("Peer endpoint", "message", strings.TrimSpace(string(p)))
	return len(p), nil
}
