"""supportmesh: observability."""
