"""Demonstrations on the running local stack (`vigil demo ...`)."""
