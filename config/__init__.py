"""Settings of every supportmesh process (a leaf package: it imports nothing of the project's)."""
