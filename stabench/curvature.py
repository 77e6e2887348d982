"""Preconditioned curvature probe (Ramasinghe et al.): to be implemented (issue 5)."""
