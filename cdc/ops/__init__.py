"""The operator's commands beside the daemon: check, status, reconcile (with compare), batches,
rebuild (star_ops)."""
