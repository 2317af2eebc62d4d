"""One runner incarnation: the `RunnerSupervisor` coordinator and the parts it delegates to."""
