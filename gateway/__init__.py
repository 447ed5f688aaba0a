"""supportmesh: gateway."""
