"""Review: a person's release or confirmation of quarantined rows, recorded in a hash-chained audit log."""
