"""The node's shared-memory object store: arena allocator and sans-IO bookkeeping."""
