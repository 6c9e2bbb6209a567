package usage

import (
	"testing"
)

func FuzzDecodeAndApply(f *testing.F) {
	f.Add([]byte(`{"idempotencyKey":"k","executions":[{"id":"a","state":"succeeded","startedAt":"2026-11-22T10:00:00Z","finishedAt":"2026-11-22T10:00:01Z"}]}`))
	f.Add([]byte(`{"idempotencyKey":"k","executions":[{"id":"a","state":"running","startedAt":"2026-11-22T10:00:00Z"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		b, err := DecodeBatch(body, now)
		if err != nil {
			return
		}
		l, _ := Decode(nil)
		if _, err := ApplyBatch(l, b, "svc", nil, now); err != nil {
			return
		}
		if again, err := Decode(l.Encode()); err != nil || len(again.InFlight) != len(l.InFlight) {
			t.Fatalf("the ledger does not survive encoding: %v", err)
		}
		s := Summarise(l, 90, now)
		if s.Succeeded+s.Failed+s.InFlight > s.Executions || s.Executions > int64(len(b.Executions)) {
			t.Fatalf("summary %+v from %d executions", s, len(b.Executions))
		}
	})
}
