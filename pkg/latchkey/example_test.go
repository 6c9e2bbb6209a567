package latchkey_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"

	"github.com/latchkey-dev/latchkey/pkg/latchkey"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// standIn answers like Latchkey for one valid key, and counts reports. In
// a cluster, Endpoint is Latchkey's webhook Service; with `make dev`, the
// URL in bin/dev/endpoint.
func standIn() (*httptest.Server, func() int) {
	var mu sync.Mutex
	reported := 0
	mux := http.NewServeMux()
	mux.HandleFunc(protocol.PathAuthorize, func(w http.ResponseWriter, r *http.Request) {
		if key, _ := protocol.BearerToken(r.Header.Get("Authorization")); key != "lk_caller" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set(protocol.HeaderTenant, "payments")
		w.Header().Set(protocol.HeaderKey, "payments/ci")
	})
	mux.HandleFunc(protocol.PathExecutions, func(w http.ResponseWriter, r *http.Request) {
		var batch protocol.Batch
		_ = json.NewDecoder(r.Body).Decode(&batch)
		mu.Lock()
		reported += len(batch.Executions)
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(protocol.ExecutionsResponse{Applied: true, Executions: len(batch.Executions)})
	})
	return httptest.NewServer(mux), func() int { mu.Lock(); defer mu.Unlock(); return reported }
}

func Example() {
	latchkeyServer, reported := standIn()
	defer latchkeyServer.Close()

	lk, err := latchkey.New(latchkey.Config{
		Endpoint: latchkeyServer.URL,
		APIKey:   "lk_service", // usually from LATCHKEY_API_KEY
	})
	if err != nil {
		panic(err)
	}
	api := lk.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		caller, _ := latchkey.CallerFrom(r.Context())
		_, _ = fmt.Fprintf(w, "hello %s", caller.Tenant)
	}))
	service := httptest.NewServer(api)
	defer service.Close()

	for _, key := range []string{"lk_caller", "lk_wrong"} {
		req, _ := http.NewRequest(http.MethodGet, service.URL, nil)
		req.Header.Set("Authorization", protocol.Bearer(key))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			panic(err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		fmt.Println(resp.StatusCode, string(body))
	}

	_ = lk.Close(context.Background()) // sends what is left
	fmt.Println("executions reported:", reported())
	// Output:
	// 200 hello payments
	// 401 a valid Latchkey API key is required
	//
	// executions reported: 1
}
