// Package controller holds Latchkey's reconcilers. The ApiKey controller
// mints each key once, delivers it to its Secret and keeps its ApiKeyRecord
// and status in step; the ApiKeyRecord controller revokes orphaned records and
// trims those of deleted keys; the Usage controller keeps one Usage per tenant,
// summarised from its UsageLedger and keys.
package controller
