"""The Procore REST client: authentication, pacing and retries, and typed endpoints."""
