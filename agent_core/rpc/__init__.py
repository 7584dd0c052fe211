"""The RPC layer spoken inside the secure channel: envelopes, errors and bulk-data chunks."""
