"""supportmesh: supportmesh."""
