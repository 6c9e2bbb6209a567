package usage

import (
	"testing"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
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
		l := &authv1alpha1.UsageLedgerSpec{}
		if _, err := Apply(l, b, now); err != nil {
			return
		}
		s := Summarise(l, 90, now)
		if s.Succeeded+s.Failed+s.InFlight > s.Executions || s.Executions > int64(len(b.Executions)) {
			t.Fatalf("summary %+v from %d executions", s, len(b.Executions))
		}
	})
}
