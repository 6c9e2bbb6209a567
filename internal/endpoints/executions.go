package endpoints

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/latchkey-dev/latchkey/internal/usage"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// Executions takes a batch of execution reports for the tenant of the
// presented key (never a tenant named in the body) and answers 200 only
// once the batch is durable in the API server.
func (s *Server) Executions(w http.ResponseWriter, r *http.Request) {
	defer s.observe("executions", s.Clock.Now())
	if !s.method(w, r, "executions", http.MethodPost) {
		return
	}
	id, ok := s.verifyKey(w, r, "executions", Want{})
	if !ok {
		return
	}
	body, err := readBody(w, r, protocol.MaxBatchBytes)
	if err != nil {
		s.badRequest(w, "executions", err.Error())
		return
	}
	batch, err := usage.DecodeBatch(body, s.Clock.Now())
	if err != nil {
		s.badRequest(w, "executions", err.Error())
		return
	}
	applied, err := s.Reports.Report(r.Context(), id.Tenant, id.KeyName, batch)
	var invalid *usage.InvalidError
	switch {
	case errors.As(err, &invalid):
		s.badRequest(w, "executions", err.Error())
		return
	case errors.Is(err, usage.ErrTooManyInFlight):
		w.Header().Set("Retry-After", "10")
		http.Error(w, err.Error(), http.StatusTooManyRequests)
		return
	case errors.Is(err, usage.ErrTooManyBatches):
		// The day's budget comes back at UTC midnight, not sooner.
		now := s.Clock.Now()
		midnight := now.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
		w.Header().Set("Retry-After", strconv.Itoa(int(midnight.Sub(now).Seconds())+1))
		http.Error(w, err.Error(), http.StatusTooManyRequests)
		return
	case errors.Is(err, usage.ErrBusy):
		// Expected while batch keys move to a segment: no fault to log.
		w.Header().Set("Retry-After", "1")
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	case err != nil:
		log.FromContext(r.Context()).Error(err, "Failed to record an execution report", "tenant", id.Tenant)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "the report could not be recorded and nothing of it was applied; retry with the same idempotencyKey", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(protocol.ExecutionsResponse{Applied: applied, Executions: len(batch.Executions)})
}
