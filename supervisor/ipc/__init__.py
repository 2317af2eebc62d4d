"""Parent-runner plumbing, standard library only: the supervisor code a runner imports."""
