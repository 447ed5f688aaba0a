"""supportmesh: mocks."""
