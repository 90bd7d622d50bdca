"""The local mirror: where each photo goes, and how its bytes get there safely."""
