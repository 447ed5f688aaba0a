"""supportmesh: saga."""
