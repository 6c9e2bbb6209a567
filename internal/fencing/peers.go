package fencing

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// PortName is the webhook Service's port that names where replicas serve
// their peers: EndpointSlices list it with every replica's address.
const PortName = "fence"

// Peers lists the URLs of the replicas' peer endpoints (this replica's own
// among them or not: its answer names it).
type Peers interface {
	URLs(ctx context.Context) ([]string, error)
}

// StaticPeers are --fence-peers, for replicas out of a cluster.
type StaticPeers []string

// URLs are the list.
func (p StaticPeers) URLs(context.Context) ([]string, error) { return p, nil }

// EndpointSlicePeers are the replicas behind the webhook Service, ready or
// not (a replica not ready may still hold fences, and is told them too),
// read from the API server when asked: a revocation or a catch-up, never
// on a timer.
type EndpointSlicePeers struct {
	Reader    client.Reader
	Namespace string
	Service   string
	// Self is this replica's pod name, whose address is skipped.
	Self string
}

// +kubebuilder:rbac:groups=discovery.k8s.io,namespace=system,resources=endpointslices,verbs=list

// URLs are every endpoint address on the Service's port named PortName.
func (p EndpointSlicePeers) URLs(ctx context.Context) ([]string, error) {
	var slices discoveryv1.EndpointSliceList
	if err := p.Reader.List(ctx, &slices, client.InNamespace(p.Namespace),
		client.MatchingLabels{discoveryv1.LabelServiceName: p.Service}); err != nil {
		return nil, fmt.Errorf("listing the EndpointSlices of Service %s/%s: %w", p.Namespace, p.Service, err)
	}
	var urls []string
	for i := range slices.Items {
		s := &slices.Items[i]
		port := int32(0)
		for _, sp := range s.Ports {
			if sp.Name != nil && *sp.Name == PortName && sp.Port != nil {
				port = *sp.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			if e.TargetRef != nil && e.TargetRef.Name == p.Self && p.Self != "" {
				continue
			}
			for _, addr := range e.Addresses {
				urls = append(urls, "https://"+net.JoinHostPort(addr, strconv.Itoa(int(port))))
			}
		}
	}
	return urls, nil
}

// peerClient calls peers' endpoints, each call bounded by timeout.
type peerClient struct {
	http    *http.Client
	timeout time.Duration
}

func newPeerClient(tlsConfig *tls.Config, timeout time.Duration) *peerClient {
	return &peerClient{timeout: timeout, http: &http.Client{Transport: &http.Transport{
		TLSClientConfig:     tlsConfig,
		ForceAttemptHTTP2:   false,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     2 * time.Minute,
		DialContext:         (&net.Dialer{Timeout: timeout}).DialContext,
	}}}
}

// fence tells the peer at url of f; the answer names the peer.
func (c *peerClient) fence(ctx context.Context, url string, f Fence) (Answer, error) {
	body, err := json.Marshal(f)
	if err != nil {
		return Answer{}, err
	}
	return c.call(ctx, http.MethodPost, strings.TrimSuffix(url, "/")+PathFence, body)
}

// fences reads what the peer at url holds.
func (c *peerClient) fences(ctx context.Context, url string) (Answer, error) {
	return c.call(ctx, http.MethodGet, strings.TrimSuffix(url, "/")+PathFences, nil)
}

func (c *peerClient) call(ctx context.Context, method, url string, body []byte) (Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return Answer{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return Answer{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return Answer{}, fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, strings.TrimSpace(string(msg)))
	}
	var a Answer
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&a); err != nil {
		return Answer{}, fmt.Errorf("%s %s: %w", method, url, err)
	}
	return a, nil
}
