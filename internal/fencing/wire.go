// Package fencing makes a revocation immediate on every replica
// (docs/replicas.md): each replica's serving lease, the peer endpoint other
// replicas fence it through, and the admission side that fences every
// replica that may serve before a revocation is allowed.
package fencing

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// The peer endpoint's paths.
const (
	PathFence  = "/v1/fence"
	PathFences = "/v1/fences"
)

// maxBody bounds a fence call's body; an answer listing fences is bounded
// by the fence table (--max-fences) instead.
const maxBody = 16 << 10

// Fence is one fence as replicas send it: the body of POST /v1/fence and
// an entry of GET /v1/fences. Server and client share it.
type Fence struct {
	APIKey KeyRef `json:"apiKey"`
	Stop   Stop   `json:"stop"`
}

// KeyRef names the ApiKey a change was made to, as the admission call
// showed it: its generation orders the change against the watch's objects.
type KeyRef struct {
	Namespace  string    `json:"namespace"`
	Name       string    `json:"name"`
	UID        types.UID `json:"uid"`
	Generation int64     `json:"generation"`
}

// Stop is verifier.Stop on the wire.
type Stop struct {
	Revoked           bool       `json:"revoked,omitempty"`
	Suspended         bool       `json:"suspended,omitempty"`
	RotationRequested *time.Time `json:"rotationRequested,omitempty"`
	Scopes            []string   `json:"scopes,omitempty"`
}

// Answer is every answer of the peer endpoint: the replica that gave it
// and, for GET /v1/fences, the fences it holds.
type Answer struct {
	Replica string  `json:"replica"`
	Fences  []Fence `json:"fences,omitempty"`
}

// FenceOf is f on the wire.
func FenceOf(f verifier.HeldFence) Fence {
	w := Fence{
		APIKey: KeyRef{Namespace: f.Key.Namespace, Name: f.Key.Name, UID: f.UID, Generation: f.Generation},
		Stop:   Stop{Revoked: f.Stop.Revoked, Suspended: f.Stop.Suspended, Scopes: f.Stop.Scopes},
	}
	if r := f.Stop.RotationRequested; !r.IsZero() {
		w.Stop.RotationRequested = &r
	}
	return w
}

// Held is the fence f describes, or why it describes none.
func (f Fence) Held() (verifier.HeldFence, error) {
	k := f.APIKey
	switch {
	case k.UID == "":
		return verifier.HeldFence{}, errors.New("apiKey.uid is required")
	case k.Namespace == "" || k.Name == "":
		return verifier.HeldFence{}, errors.New("apiKey.namespace and apiKey.name are required")
	case k.Generation < 0:
		return verifier.HeldFence{}, errors.New("apiKey.generation must not be negative")
	}
	h := verifier.HeldFence{
		Key: types.NamespacedName{Namespace: k.Namespace, Name: k.Name}, UID: k.UID, Generation: k.Generation,
		Stop: verifier.Stop{Revoked: f.Stop.Revoked, Suspended: f.Stop.Suspended, Scopes: f.Stop.Scopes},
	}
	if f.Stop.RotationRequested != nil {
		h.Stop.RotationRequested = *f.Stop.RotationRequested
	}
	if h.Stop.IsZero() {
		return verifier.HeldFence{}, errors.New("stop takes nothing away: set revoked, suspended, rotationRequested or scopes")
	}
	return h, nil
}

// decodeStrict reads one JSON value of at most maxBody bytes into v,
// refusing unknown fields and anything after it.
func decodeStrict(r io.Reader, v any) error {
	body, err := io.ReadAll(io.LimitReader(r, maxBody+1))
	if err != nil {
		return fmt.Errorf("reading the body: %w", err)
	}
	if len(body) > maxBody {
		return fmt.Errorf("body larger than %d bytes", maxBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed body: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("malformed body: more than one JSON value")
	}
	return nil
}
