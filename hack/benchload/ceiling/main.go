// Command ceiling is the physical limit of the machine for Latchkey's
// verification job: a bare net/http TLS server whose /authorize SHA-256s
// the bearer key and looks it up in a map, answering 200 or 401. The load
// benchmark (hack/benchload) measures the manager against it.
package main

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "Where to listen.")
	certDir := flag.String("cert-dir", "", "The directory holding tls.crt and tls.key (the manager's serving certificate).")
	keysFile := flag.String("keys", "", "A file of raw keys, one a line, read once at start.")
	flag.Parse()
	if err := run(*addr, *certDir, *keysFile); err != nil {
		fmt.Fprintln(os.Stderr, "ceiling:", err)
		os.Exit(1)
	}
}

func run(addr, certDir, keysFile string) error {
	hashes, err := readHashes(keysFile)
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(certDir, "tls.crt"), filepath.Join(certDir, "tls.key"))
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/authorize", func(w http.ResponseWriter, r *http.Request) {
		if token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			if _, found := hashes[sha256.Sum256([]byte(token))]; found {
				w.WriteHeader(http.StatusOK)
				return
			}
		}
		w.WriteHeader(http.StatusUnauthorized)
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	// The manager serves HTTP/1.1 only (HTTP/2 is off by default), so does this.
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// wrk ends a round by dropping its connections mid-handshake.
		ErrorLog:  log.New(io.Discard, "", 0),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12},
	}
	// The benchmark waits for this line before it loads the server.
	fmt.Printf("ready %d keys on %s\n", len(hashes), l.Addr())
	return srv.ServeTLS(l, "", "")
}

// readHashes reads the keys and keeps only their hashes, as the manager does.
func readHashes(file string) (map[[32]byte]struct{}, error) {
	f, err := os.Open(file) //nolint:gosec // the benchmark names the file
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	hashes := map[[32]byte]struct{}{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		if line := strings.TrimSpace(s.Text()); line != "" {
			hashes[sha256.Sum256([]byte(line))] = struct{}{}
		}
	}
	return hashes, s.Err()
}
