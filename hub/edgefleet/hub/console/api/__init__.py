"""The REST API and dashboard server (FastAPI, uvicorn)."""
