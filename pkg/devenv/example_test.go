package devenv_test

import (
	"context"
	"log"
	"net/http"
	"os"

	"github.com/latchkey-dev/latchkey/pkg/devenv"
)

// A service's integration test runs against a local Latchkey: mint a key
// with an ApiKey through lk.Client, read it from its Secret, and call the
// service with it; the service verifies it at lk.Endpoint.
func ExampleStart() {
	ctx := context.Background()
	lk, err := devenv.Start(ctx, devenv.Options{AssetsDir: os.Getenv("KUBEBUILDER_ASSETS")})
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = lk.Stop() }()
	resp, err := lk.HTTPClient.Get(lk.Endpoint + "/whoami")
	if err != nil {
		log.Fatal(err)
	}
	_ = resp.Body.Close()
	log.Println(resp.StatusCode == http.StatusUnauthorized) // no key, no identity
}
