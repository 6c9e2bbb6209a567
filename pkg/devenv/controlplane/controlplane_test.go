package controlplane

import "testing"

// Ports drawn one after another, as a control plane draws its three, are
// never the same, though none is bound in between.
func TestFreePortNeverHandsAClaimedPortAgain(t *testing.T) {
	seen := map[int]bool{}
	for range 300 {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[port] {
			t.Fatalf("port %d drawn twice within %s", port, claimFor)
		}
		seen[port] = true
	}
}
