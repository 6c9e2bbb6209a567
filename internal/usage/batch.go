package usage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// A report's wire shape is the published protocol's; the arithmetic and
// the store name it here, where it is validated and applied.
type (
	State     = protocol.State
	Execution = protocol.Execution
	Batch     = protocol.Batch
)

// The states of an execution, as protocol declares them.
const (
	Running      = protocol.Running
	Paused       = protocol.Paused
	Succeeded    = protocol.Succeeded
	Failed       = protocol.Failed
	Cancelled    = protocol.Cancelled
	Compensating = protocol.Compensating
)

// MaxBatchExecutions is the protocol's limit, named here for the store.
const MaxBatchExecutions = protocol.MaxBatchExecutions

// MaxClockSkew is how far in the future a timestamp may be.
const MaxClockSkew = 5 * time.Minute

// InvalidError is a report refused as a whole; its text names the problem.
type InvalidError struct{ Reason string }

func (e *InvalidError) Error() string { return e.Reason }

func invalid(format string, args ...any) error {
	return &InvalidError{Reason: fmt.Sprintf(format, args...)}
}

// DecodeBatch parses and checks a report body. Everything that can be
// judged without the ledger is judged here; ApplyBatch judges the rest.
func DecodeBatch(body []byte, now time.Time) (*Batch, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, invalid("empty body: expected {\"idempotencyKey\": ..., \"executions\": [...]}")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	b := &Batch{}
	if err := dec.Decode(b); err != nil {
		var typeErr *json.UnmarshalTypeError
		var timeErr *time.ParseError
		switch {
		case errors.As(err, &typeErr):
			return nil, invalid("%s must be a %s", typeErr.Field, typeErr.Type)
		case errors.As(err, &timeErr):
			return nil, invalid("timestamps must be RFC 3339, such as 2026-11-22T10:00:00Z")
		default:
			return nil, invalid("body is not a JSON report: %s", short(err.Error()))
		}
	}
	if dec.More() {
		return nil, invalid("body holds more than one JSON value")
	}
	if b.IdempotencyKey == "" {
		return nil, invalid("idempotencyKey is required: reuse it when retrying the same batch")
	}
	if len(b.IdempotencyKey) > protocol.MaxIDLength {
		return nil, invalid("idempotencyKey is longer than %d characters", protocol.MaxIDLength)
	}
	if len(b.Executions) == 0 {
		return nil, invalid("executions is empty")
	}
	if len(b.Executions) > MaxBatchExecutions {
		return nil, invalid("executions holds %d entries; the limit is %d per batch", len(b.Executions), MaxBatchExecutions)
	}
	limit := now.Add(MaxClockSkew)
	for i, e := range b.Executions {
		switch {
		case e.ID == "":
			return nil, invalid("executions[%d].id is required", i)
		case len(e.ID) > protocol.MaxIDLength:
			return nil, invalid("executions[%d].id is longer than %d characters", i, protocol.MaxIDLength)
		case !e.State.Valid():
			return nil, invalid("executions[%d].state must be running, paused, succeeded, failed, cancelled or compensating", i)
		case e.StartedAt.IsZero():
			return nil, invalid("executions[%d].startedAt is required", i)
		case e.StartedAt.After(limit):
			return nil, invalid("executions[%d].startedAt is in the future", i)
		case e.State.Terminal() && e.FinishedAt == nil:
			return nil, invalid("executions[%d].finishedAt is required for a %s execution", i, e.State)
		case !e.State.Terminal() && e.FinishedAt != nil:
			return nil, invalid("executions[%d].finishedAt must be unset while the execution is %s", i, e.State)
		case e.FinishedAt != nil && e.FinishedAt.Before(e.StartedAt):
			return nil, invalid("executions[%d].finishedAt is before its startedAt", i)
		case e.FinishedAt != nil && e.FinishedAt.After(limit):
			return nil, invalid("executions[%d].finishedAt is in the future", i)
		}
	}
	return b, nil
}

// short keeps a decoder message from echoing much of the body.
func short(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
