"""The datasets service: not built yet (see README, Status). This package is a placeholder and runs nothing."""
