package latchkey

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// TestOutcomes checks how answers map to execution states, against a
// stand-in that records what is reported.
func TestOutcomes(t *testing.T) {
	var mu sync.Mutex
	var states []protocol.State
	latchkeyServer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case protocol.PathAuthorize:
			w.Header().Set(protocol.HeaderTenant, "t")
		case protocol.PathExecutions:
			var b protocol.Batch
			_ = json.NewDecoder(r.Body).Decode(&b)
			mu.Lock()
			for _, e := range b.Executions {
				states = append(states, e.State)
			}
			mu.Unlock()
		}
	}))
	defer latchkeyServer.Close()
	lk, err := New(Config{Endpoint: latchkeyServer.URL, APIKey: "k", FlushInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	svc := httptest.NewServer(lk.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/404":
			w.WriteHeader(http.StatusNotFound)
		case "/302":
			http.Redirect(w, r, "/", http.StatusFound)
		case "/503":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/slow":
			<-r.Context().Done()
		}
	})))
	defer svc.Close()

	tests := []struct{ name, path string }{
		{"a 2xx answer is a success", "/"},
		{"a 3xx answer is a success", "/302"},
		{"a 4xx answer is a success: the service did its job", "/404"},
		{"a 5xx answer is a failure", "/503"},
		{"a caller that goes away cancels the execution", "/slow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, svc.URL+tt.path, nil)
			req.Header.Set("Authorization", "Bearer x")
			client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			if resp, err := client.Do(req); err == nil {
				_ = resp.Body.Close()
			}
		})
	}
	time.Sleep(100 * time.Millisecond) // the cancelled handler returns
	if err := lk.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	slices.Sort(states)
	want := []protocol.State{protocol.Cancelled, protocol.Failed, protocol.Succeeded, protocol.Succeeded, protocol.Succeeded}
	if len(states) != len(want) {
		t.Fatalf("reported %v, want %v", states, want)
	}
	for i := range want {
		if states[i] != want[i] {
			t.Fatalf("reported %v, want %v", states, want)
		}
	}
}

func TestBufferIsBounded(t *testing.T) {
	blocked := make(chan struct{})
	latchkeyServer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-blocked }))
	defer latchkeyServer.Close()
	defer close(blocked)
	lk, _ := New(Config{Endpoint: latchkeyServer.URL, APIKey: "k", BufferSize: 10, BatchSize: 1, MaxAttempts: 1})
	for range 100 {
		lk.enqueue(protocol.Execution{ID: newID(), State: protocol.Succeeded})
	}
	if lk.Dropped() < 80 {
		t.Fatalf("only %d of 100 dropped with a buffer of 10 and a stuck Latchkey", lk.Dropped())
	}
}
