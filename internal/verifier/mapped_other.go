//go:build !(linux || darwin) || race

package verifier

// slabsOffHeap is false: without mmap, or under the race detector (see
// mapped_unix.go), every slab is on the heap.
const slabsOffHeap = false

func mapMemory(int) ([]byte, bool) { return nil, false }

func unmapMemory([]byte) {}
