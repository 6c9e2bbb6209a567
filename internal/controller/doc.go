// Package controller holds Latchkey's reconcilers. The ApiKey controller
// mints each key once, delivers it to its Secret, rotates it into the same
// Secret on request or on schedule (a record per key, the replaced ones
// valid through their grace period), and keeps the records and status in
// step; the ApiKeyRecord controller revokes orphaned records and
// trims those of deleted keys; the Usage controller keeps one Usage per tenant,
// summarised from its UsageLedger and keys.
package controller
