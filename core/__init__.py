"""MetaRouter's platform-neutral core: routing, inventory, generation, storage."""
