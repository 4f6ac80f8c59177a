"""Weight buckets and transports between learners and rollout engines (pure torch; Ray only for the
object store, imported lazily)."""
