//go:build (linux || darwin) && !race

package verifier

import "syscall"

// slabsOffHeap says slabs of values without pointers are mapped off the
// heap. Not under the race detector, which sees no access to memory it
// did not allocate: there the slabs stay on the heap, where it checks them.
const slabsOffHeap = true

// mapMemory maps size bytes of zeroed memory off the Go heap; ok is false
// when the system refuses, and the caller uses the heap.
func mapMemory(size int) (b []byte, ok bool) {
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, false
	}
	mappedBytes.Add(int64(size))
	return b, true
}

func unmapMemory(b []byte) {
	if syscall.Munmap(b) == nil {
		mappedBytes.Add(-int64(len(b)))
	}
}
