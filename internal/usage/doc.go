// Package usage is the arithmetic of execution reports, with no I/O:
// validating a batch (batch.go), the bounded ledger a tenant's reports are
// kept in and its stored form (ledger.go), applying a batch to it exactly
// once and adding verification counts (apply.go), and summarising it into
// a Usage window (summary.go).
//
// Its subpackages do the I/O: store writes ledgers to the API server, and
// activity writes keys' last use and hands verification counts to the store.
package usage
