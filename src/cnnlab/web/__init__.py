"""The web explorer: a FastAPI server and its static page."""
