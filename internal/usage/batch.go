// Package usage is the arithmetic of execution reports: validating a batch,
// applying it to a tenant's ledger exactly once, and summarising a ledger
// into a Usage window. It holds no I/O; the endpoint and the controller do.
package usage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// State is an execution's state as a service reports it.
type State string

// The states of an execution. Failed, cancelled and compensating all count
// as failed; running and paused count toward the total only.
const (
	Running      State = "running"
	Paused       State = "paused"
	Succeeded    State = "succeeded"
	Failed       State = "failed"
	Cancelled    State = "cancelled"
	Compensating State = "compensating"
)

// Terminal reports whether an execution in state s has ended.
func (s State) Terminal() bool {
	switch s {
	case Succeeded, Failed, Cancelled, Compensating:
		return true
	}
	return false
}

func (s State) valid() bool { return s == Running || s == Paused || s.Terminal() }

// Limits of a batch.
const (
	MaxBatchExecutions = 1000
	MaxBatchBytes      = 1 << 20
	MaxIDLength        = 256
	// MaxClockSkew is how far in the future a timestamp may be.
	MaxClockSkew = 5 * time.Minute
)

// Execution is one unit of work a service performed for a key holder.
type Execution struct {
	ID         string     `json:"id"`
	State      State      `json:"state"`
	StartedAt  time.Time  `json:"startedAt"`
	FinishedAt *time.Time `json:"finishedAt,omitempty"`
}

// Batch is one report: executions and the key that makes retrying it safe.
type Batch struct {
	IdempotencyKey string      `json:"idempotencyKey"`
	Executions     []Execution `json:"executions"`
}

// InvalidError is a report refused as a whole; its text names the problem.
type InvalidError struct{ Reason string }

func (e *InvalidError) Error() string { return e.Reason }

func invalid(format string, args ...any) error {
	return &InvalidError{Reason: fmt.Sprintf(format, args...)}
}

// DecodeBatch parses and checks a report body. Everything that can be
// judged without the ledger is judged here; Apply judges the rest.
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
	if len(b.IdempotencyKey) > MaxIDLength {
		return nil, invalid("idempotencyKey is longer than %d characters", MaxIDLength)
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
		case len(e.ID) > MaxIDLength:
			return nil, invalid("executions[%d].id is longer than %d characters", i, MaxIDLength)
		case !e.State.valid():
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
