package protocol

import "time"

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

// Terminal reports whether an execution in state s has ended: a report of
// it carries finishedAt, and a later report cannot move it back.
func (s State) Terminal() bool {
	switch s {
	case Succeeded, Failed, Cancelled, Compensating:
		return true
	}
	return false
}

// Valid reports whether s is one of the states.
func (s State) Valid() bool { return s == Running || s == Paused || s.Terminal() }

// Limits of one report.
const (
	MaxBatchExecutions = 1000
	MaxBatchBytes      = 1 << 20
	// MaxIDLength bounds an idempotency key and an execution's id.
	MaxIDLength = 256
)

// Execution is one unit of work a service performed for a key holder.
type Execution struct {
	ID         string     `json:"id"`
	State      State      `json:"state"`
	StartedAt  time.Time  `json:"startedAt"`
	FinishedAt *time.Time `json:"finishedAt,omitempty"`
}

// Batch is one report to PathExecutions: executions, and the key that
// makes retrying it safe (a retry sends the same one).
type Batch struct {
	IdempotencyKey string      `json:"idempotencyKey"`
	Executions     []Execution `json:"executions"`
}

// ExecutionsResponse acknowledges a report once it is durable.
type ExecutionsResponse struct {
	// Applied is false when the batch had been applied before (a retry).
	Applied    bool `json:"applied"`
	Executions int  `json:"executions"`
}
