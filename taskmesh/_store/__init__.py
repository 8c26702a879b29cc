"""The node's shared-memory object store: the arena (shm), its allocator and the store's sans-IO bookkeeping."""
