"""Provenance: signed batch manifests, the trust store of sources, the replay ledger, and the facts of one
batch's provenance that the provenance expectations validate."""
