"""Parent-runner plumbing with the standard library only: the only supervisor code a runner imports."""
