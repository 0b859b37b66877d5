"""The serving core: models loaded and routed, frames run through them; no transport here."""
