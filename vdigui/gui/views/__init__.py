"""The right-hand views: overview, header hex dump, block map and fragmentation."""
