"""What every background process shares: the ops HTTP app, stop signals, GC tuning, retries, child processes."""
