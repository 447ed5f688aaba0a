"""supportmesh: actors."""
