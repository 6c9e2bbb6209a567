package verifier

// MappedBytes is how many bytes of the index's slabs are off the heap.
func MappedBytes() int64 { return mappedBytes.Load() }
