"""Deployment checks: Dockerfile, Kubernetes manifests, monitoring (offline)."""
