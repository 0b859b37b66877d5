"""The review UI and its JSON API (api.py), and the people who sign in to it (users.py)."""
