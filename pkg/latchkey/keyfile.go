package latchkey

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// The environment variables a Client reads its own key from.
const (
	// EnvAPIKeyFile names a file holding the key, re-read when it changes.
	EnvAPIKeyFile = "LATCHKEY_API_KEY_FILE"
	// EnvAPIKey holds the key itself.
	EnvAPIKey = "LATCHKEY_API_KEY"
)

// keyFileCheckInterval bounds how often a key file is looked at: a stat a
// second costs nothing, and kubelet takes about a minute to refresh a
// mounted Secret anyway.
const keyFileCheckInterval = time.Second

// keyFile is a key in a file that may be replaced while the service runs.
// A mounted Secret's api-key is a symlink to ..data/api-key, and kubelet
// updates the volume by writing a new timestamped directory and renaming a
// new ..data symlink over the old one: the path stays, the file it leads
// to is another. So the file is stat'ed through the symlinks and read again
// when it is not the same file, or it was written in place.
type keyFile struct {
	path string

	mu      sync.Mutex
	key     string
	info    os.FileInfo // of the file key was read from
	checked time.Time
}

// get is the newest key, looking at the file if it has not been looked at
// for keyFileCheckInterval. When the file cannot be read it returns the
// key read before with the error, which never holds any of the file's
// content.
func (f *keyFile) get(now time.Time) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.key != "" && now.Sub(f.checked) < keyFileCheckInterval {
		return f.key, nil
	}
	f.checked = now
	info, err := os.Stat(f.path)
	if err != nil {
		return f.key, fmt.Errorf("latchkey: reading the API key file: %w", err)
	}
	if f.info != nil && os.SameFile(f.info, info) && info.ModTime().Equal(f.info.ModTime()) && info.Size() == f.info.Size() {
		return f.key, nil
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return f.key, fmt.Errorf("latchkey: reading the API key file: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return f.key, fmt.Errorf("latchkey: the API key file %s holds no key", f.path)
	}
	f.key, f.info = key, info
	return f.key, nil
}
