"""The dashboard's assets, shipped as package data (no CDN)."""
